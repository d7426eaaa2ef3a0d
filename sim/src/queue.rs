//! The hardware of one node as queues: CPU cores serving requests first come first
//! served, and a disk whose writes wait for a shared fsync (group commit). Times are
//! virtual microseconds; each call answers when the request it adds completes.

/// Most cores one CPU model has (kept inline: no allocation, one cache line or two).
pub const CORES_MAX: u32 = 16;

/// CPU cores, each serving one request at a time.
#[derive(Debug, Clone)]
pub struct Cpu {
    free_at_us: [f64; CORES_MAX as usize],
    cores: usize,
}

impl Cpu {
    /// `cores` idle cores (1 to [`CORES_MAX`]).
    pub fn new(cores: u32) -> Self {
        Cpu {
            free_at_us: [0.0; CORES_MAX as usize],
            cores: cores.clamp(1, CORES_MAX) as usize,
        }
    }

    /// A request arriving at `at_us` needing `service_us` of one core: when it ends.
    pub fn serve(&mut self, at_us: f64, service_us: f64) -> f64 {
        let free = &mut self.free_at_us[..self.cores];
        let mut best = 0;
        for (i, f) in free.iter().enumerate() {
            if *f < free[best] {
                best = i;
            }
        }
        let end = free[best].max(at_us) + service_us;
        free[best] = end;
        end
    }

    /// Work queued beyond `now_us`, summed over cores.
    pub fn backlog_us(&self, now_us: f64) -> f64 {
        self.free_at_us[..self.cores]
            .iter()
            .map(|f| (f - now_us).max(0.0))
            .sum()
    }
}

/// A disk with group commit: a write lands in the next fsync to start after it
/// arrives; while one fsync runs, arriving writes gather for the next.
#[derive(Debug, Clone, Default)]
pub struct Disk {
    /// End of the fsync in progress (or of the last one).
    current_end_us: f64,
    /// Writes covered by it.
    current_writes: u32,
    /// The batch gathering behind it: (end, writes).
    next: Option<(f64, u32)>,
}

impl Disk {
    fn settle(&mut self, now_us: f64) {
        while now_us >= self.current_end_us {
            match self.next.take() {
                Some((end, writes)) => {
                    self.current_end_us = end;
                    self.current_writes = writes;
                }
                None => {
                    self.current_writes = 0;
                    return;
                }
            }
        }
    }

    /// A write of `bytes` arriving at `at_us`: when it is durable.
    pub fn write(&mut self, at_us: f64, bytes: u64, bytes_per_us: f64, fsync_us: f64) -> f64 {
        self.write_with(at_us, bytes as f64 / bytes_per_us.max(1e-9), fsync_us)
    }

    /// A write whose serial work in the writer (transfer included) is `work_us`.
    pub fn write_with(&mut self, at_us: f64, work_us: f64, fsync_us: f64) -> f64 {
        self.settle(at_us);
        let transfer_us = work_us;
        if at_us >= self.current_end_us {
            self.current_end_us = at_us + transfer_us + fsync_us;
            self.current_writes = 1;
            return self.current_end_us;
        }
        let (end, writes) = self.next.get_or_insert((self.current_end_us + fsync_us, 0));
        *end += transfer_us;
        *writes += 1;
        *end
    }

    /// Writes not yet durable at `now_us`, without settling (for load figures).
    pub fn pending_at(&self, now_us: f64) -> u32 {
        let current = if now_us < self.current_end_us {
            self.current_writes
        } else {
            0
        };
        current
            + self
                .next
                .filter(|(end, _)| now_us < *end)
                .map_or(0, |(_, w)| w)
    }

    /// Writes not yet durable at `now_us`.
    pub fn pending(&mut self, now_us: f64) -> u32 {
        self.settle(now_us);
        let current = if now_us < self.current_end_us {
            self.current_writes
        } else {
            0
        };
        current + self.next.map_or(0, |(_, w)| w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cores_serve_in_parallel_then_queue() {
        let mut cpu = Cpu::new(2);
        assert_eq!(cpu.serve(0.0, 10.0), 10.0);
        assert_eq!(cpu.serve(0.0, 10.0), 10.0);
        assert_eq!(cpu.serve(0.0, 10.0), 20.0);
        assert_eq!(cpu.backlog_us(5.0), 15.0 + 5.0);
        assert_eq!(cpu.serve(100.0, 1.0), 101.0);
    }

    #[test]
    fn writes_behind_a_running_fsync_share_the_next() {
        let mut d = Disk::default();
        // Idle: one fsync of its own.
        assert_eq!(d.write(0.0, 0, 1.0, 100.0), 100.0);
        // Three writes during it: all durable at the end of the next fsync.
        assert_eq!(d.write(10.0, 0, 1.0, 100.0), 200.0);
        assert_eq!(d.write(20.0, 0, 1.0, 100.0), 200.0);
        assert_eq!(d.pending(30.0), 3);
        assert_eq!(d.pending(150.0), 2);
        assert_eq!(d.pending(250.0), 0);
        // Bytes add transfer time.
        assert_eq!(d.write(300.0, 50, 1.0, 100.0), 450.0);
    }
}
