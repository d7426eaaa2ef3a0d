//! The clients: who gets mail (Zipf popularity), how big it is, when it arrives.

use softstate::place::Rng;

use crate::config::SizeDist;

/// A uniform number in [0, 1).
pub fn unit(rng: &mut Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// An exponential gap with mean `mean` (Poisson arrivals).
pub fn exp_gap(rng: &mut Rng, mean: f64) -> f64 {
    -mean * (1.0 - unit(rng)).ln()
}

/// User popularity: user ranks 0..n with P(k) ∝ 1/(k+1)^s, drawn in O(1) by
/// inverting the continuous approximation of the Zipf CDF (exact for s = 0).
#[derive(Debug, Clone)]
pub struct Zipf {
    n: u64,
    s: f64,
    /// (n+1)^(1-s) - 1, or ln(n+1) for s = 1.
    span: f64,
}

impl Zipf {
    /// Popularity over `n` users with exponent `s` (0 = uniform).
    pub fn new(n: u64, s: f64) -> Self {
        let n = n.max(1);
        let top = (n + 1) as f64;
        let span = if (s - 1.0).abs() < 1e-9 {
            top.ln()
        } else {
            top.powf(1.0 - s) - 1.0
        };
        Zipf { n, s, span }
    }

    /// One user rank, 0 the most popular.
    pub fn draw(&self, rng: &mut Rng) -> u64 {
        let u = unit(rng);
        let x = if self.s == 0.0 {
            1.0 + u * self.n as f64
        } else if (self.s - 1.0).abs() < 1e-9 {
            (u * self.span).exp()
        } else {
            (1.0 + u * self.span).powf(1.0 / (1.0 - self.s))
        };
        ((x.floor() as u64).saturating_sub(1)).min(self.n - 1)
    }
}

/// One message size.
pub fn size(dist: &SizeDist, rng: &mut Rng) -> u64 {
    match *dist {
        SizeDist::Fixed(n) => n,
        SizeDist::Uniform(a, b) => a + (unit(rng) * (b - a + 1) as f64) as u64,
        SizeDist::Lognormal(median, sigma) => {
            // Box-Muller.
            let (u1, u2) = (1.0 - unit(rng), unit(rng));
            let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            (median * (sigma * z).exp()).clamp(200.0, 50e6) as u64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_skews_toward_low_ranks_and_zero_is_uniform() {
        let mut rng = Rng::new(5);
        let n = 1000;
        let count = |s: f64, rng: &mut Rng| {
            let z = Zipf::new(n, s);
            let mut top = 0;
            for _ in 0..100_000 {
                let k = z.draw(rng);
                assert!(k < n);
                top += u64::from(k < 10);
            }
            top
        };
        let uniform = count(0.0, &mut rng);
        assert!((800..1200).contains(&uniform), "{uniform}");
        // s = 1: the top 10 of 1000 get ln(11)/ln(1001) ≈ 35 %.
        let skewed = count(1.0, &mut rng);
        assert!((30_000..40_000).contains(&skewed), "{skewed}");
    }

    #[test]
    fn sizes_follow_their_distribution() {
        let mut rng = Rng::new(9);
        assert_eq!(size(&SizeDist::Fixed(7), &mut rng), 7);
        let mut v: Vec<u64> = (0..10_001)
            .map(|_| size(&SizeDist::Lognormal(4000.0, 1.0), &mut rng))
            .collect();
        v.sort_unstable();
        let median = v[5000];
        assert!((3600..4400).contains(&median), "{median}");
        for _ in 0..1000 {
            let s = size(&SizeDist::Uniform(10, 20), &mut rng);
            assert!((10..=20).contains(&s));
        }
    }
}
