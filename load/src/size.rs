//! Message size distributions (`--size`): what is drawn is the whole message as sent
//! (header section + body), bytes.

use crate::rng::Rng;

/// Smallest message drawn: the generated header section needs room for a body.
pub const SIZE_BYTES_MIN: u64 = 512;
/// Largest message drawn (below the usual 25 MiB server limit).
pub const SIZE_BYTES_MAX: u64 = 20 * 1024 * 1024;

/// How message sizes are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SizeDist {
    /// Every message this many bytes.
    Fixed(u64),
    /// Uniform between the two bounds, inclusive.
    Uniform(u64, u64),
    /// Lognormal with this median (bytes) and sigma: many small, a long tail.
    Lognormal(f64, f64),
}

impl SizeDist {
    /// Parse `N`, `fixed:N`, `uniform:A-B` or `lognormal:MEDIAN,SIGMA`.
    pub fn parse(text: &str) -> Result<SizeDist, String> {
        let bad =
            || format!("--size {text:?}: want N, fixed:N, uniform:A-B or lognormal:MEDIAN,SIGMA");
        let num = |s: &str| s.trim().parse::<u64>().map_err(|_| bad());
        let dist = if let Ok(n) = text.trim().parse::<u64>() {
            SizeDist::Fixed(n)
        } else {
            let (kind, rest) = text.split_once(':').ok_or_else(bad)?;
            match kind.trim() {
                "fixed" => SizeDist::Fixed(num(rest)?),
                "uniform" => {
                    let (a, b) = rest.split_once('-').ok_or_else(bad)?;
                    let (a, b) = (num(a)?, num(b)?);
                    if a > b {
                        return Err(bad());
                    }
                    SizeDist::Uniform(a, b)
                }
                "lognormal" => {
                    let (m, s) = rest.split_once(',').ok_or_else(bad)?;
                    let m: f64 = m.trim().parse().map_err(|_| bad())?;
                    let s: f64 = s.trim().parse().map_err(|_| bad())?;
                    if !(m.is_finite() && m > 0.0 && s.is_finite() && s >= 0.0) {
                        return Err(bad());
                    }
                    SizeDist::Lognormal(m, s)
                }
                _ => return Err(bad()),
            }
        };
        Ok(dist)
    }

    /// One size, clamped to [`SIZE_BYTES_MIN`, `SIZE_BYTES_MAX`].
    pub fn sample(&self, rng: &mut Rng) -> u64 {
        let raw = match *self {
            SizeDist::Fixed(n) => n,
            SizeDist::Uniform(a, b) => a + rng.below(b - a + 1),
            SizeDist::Lognormal(median, sigma) => {
                let x = median * (sigma * rng.normal_f64()).exp();
                if x.is_finite() {
                    x as u64
                } else {
                    SIZE_BYTES_MAX
                }
            }
        };
        raw.clamp(SIZE_BYTES_MIN, SIZE_BYTES_MAX)
    }
}

impl std::fmt::Display for SizeDist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SizeDist::Fixed(n) => write!(f, "fixed:{n}"),
            SizeDist::Uniform(a, b) => write!(f, "uniform:{a}-{b}"),
            SizeDist::Lognormal(m, s) => write!(f, "lognormal:{m},{s}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!(SizeDist::parse("4096"), Ok(SizeDist::Fixed(4096)));
        assert_eq!(SizeDist::parse("fixed:100"), Ok(SizeDist::Fixed(100)));
        assert_eq!(
            SizeDist::parse("uniform:1000-2000"),
            Ok(SizeDist::Uniform(1000, 2000))
        );
        assert_eq!(
            SizeDist::parse("lognormal:4000,1.5"),
            Ok(SizeDist::Lognormal(4000.0, 1.5))
        );
        for bad in [
            "",
            "x",
            "fixed:",
            "uniform:5-1",
            "uniform:3",
            "lognormal:0,1",
            "poisson:3",
        ] {
            assert!(SizeDist::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn fixed_is_fixed_and_clamped() {
        let mut rng = Rng::new(1);
        assert_eq!(SizeDist::Fixed(4096).sample(&mut rng), 4096);
        assert_eq!(SizeDist::Fixed(1).sample(&mut rng), SIZE_BYTES_MIN);
        assert_eq!(SizeDist::Fixed(u64::MAX).sample(&mut rng), SIZE_BYTES_MAX);
    }

    #[test]
    fn uniform_covers_its_range_evenly() {
        let mut rng = Rng::new(7);
        let d = SizeDist::Uniform(1000, 1999);
        let mut buckets = [0u32; 10];
        for _ in 0..100_000 {
            let s = d.sample(&mut rng);
            assert!((1000..=1999).contains(&s));
            buckets[((s - 1000) / 100) as usize] += 1;
        }
        for b in buckets {
            assert!((9_000..11_000).contains(&b), "{buckets:?}");
        }
    }

    #[test]
    fn lognormal_has_its_median_and_a_tail() {
        let mut rng = Rng::new(3);
        let d = SizeDist::Lognormal(4000.0, 1.0);
        let mut v: Vec<u64> = (0..100_001).map(|_| d.sample(&mut rng)).collect();
        v.sort_unstable();
        let median = v[v.len() / 2] as f64;
        assert!((median - 4000.0).abs() < 120.0, "median {median}");
        // e^(1.2816 sigma) * median is the 90th percentile.
        let p90 = v[v.len() * 9 / 10] as f64;
        assert!((p90 / 4000.0 - 3.602).abs() < 0.15, "p90 {p90}");
        let mean = v.iter().sum::<u64>() as f64 / v.len() as f64;
        assert!(mean > median, "a right tail: mean {mean} > median {median}");
    }

    #[test]
    fn same_seed_same_sizes() {
        let d = SizeDist::Lognormal(4000.0, 1.0);
        let (mut a, mut b) = (Rng::new(9), Rng::new(9));
        for _ in 0..100 {
            assert_eq!(d.sample(&mut a), d.sample(&mut b));
        }
    }
}
