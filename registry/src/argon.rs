//! Argon2 work on a small, fixed pool of threads.
//!
//! Every Argon2id hash or verification fills 19 MiB (the default `m_cost`). Run on
//! tokio's blocking pool, a storm of failed logins meant hundreds of threads each
//! allocating their own 19 MiB, which the allocator kept: 100 parallel wrong `PASS`
//! commands took a node from 1.4 GB to 3.4 GB. Here a fixed number of threads each own
//! one memory buffer, allocated once and reused, so the memory Argon2 can take is
//! `threads x m_cost`, whatever the load. A caller waits (asynchronously, costing
//! nothing but a task) for a free thread at most `wait_max`, then gets
//! [`ArgonError::Busy`].

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

/// Largest `m_cost` (KiB) a stored hash may ask for; a hash asking for more never
/// matches rather than making a thread allocate it.
const M_COST_MAX_KIB: u32 = 256 * 1024;

/// Why Argon2 work was not done.
#[derive(Debug, thiserror::Error)]
pub enum ArgonError {
    /// Every thread stayed busy for longer than the pool's wait bound.
    #[error("password checks are busy, try again later")]
    Busy,
    /// The pool's threads are gone (the process is shutting down).
    #[error("password threads stopped")]
    Stopped,
    /// Hashing a new password failed.
    #[error("password hashing: {0}")]
    Hash(String),
}

/// One piece of work for a thread.
enum Job {
    Verify {
        hash: String,
        password: String,
        reply: oneshot::Sender<bool>,
    },
    Hash {
        password: String,
        reply: oneshot::Sender<Result<String, String>>,
    },
}

/// A fixed set of Argon2 threads with reusable memory; cheap to clone (shared).
#[derive(Clone)]
pub struct ArgonPool {
    permits: Arc<Semaphore>,
    jobs: mpsc::Sender<(Job, OwnedSemaphorePermit)>,
    wait_max: Duration,
    threads: usize,
}

impl std::fmt::Debug for ArgonPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArgonPool")
            .field("threads", &self.threads)
            .field("available", &self.permits.available_permits())
            .field("wait_max", &self.wait_max)
            .finish()
    }
}

impl ArgonPool {
    /// `threads` Argon2 threads (0: one per core, at least 2); a caller waits at most
    /// `wait_max` for one of them.
    pub fn new(threads: usize, wait_max: Duration) -> ArgonPool {
        let threads = match threads {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .max(2),
            n => n,
        };
        let (jobs, rx) = mpsc::channel::<(Job, OwnedSemaphorePermit)>();
        let rx = Arc::new(Mutex::new(rx));
        for index in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{index}"))
                .spawn(move || worker(&rx));
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "could not start an Argon2 thread");
            }
        }
        ArgonPool {
            permits: Arc::new(Semaphore::new(threads)),
            jobs,
            wait_max,
            threads,
        }
    }

    /// Threads in the pool (also the most verifications running at once).
    pub fn threads(&self) -> usize {
        self.threads
    }

    async fn submit(&self, job: impl FnOnce() -> Job) -> Result<(), ArgonError> {
        let permit = tokio::time::timeout(self.wait_max, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| ArgonError::Busy)?
            .map_err(|_| ArgonError::Stopped)?;
        // The permit travels with the job and is released by the thread when the work
        // is done, also when the caller has given up waiting for the answer.
        self.jobs
            .send((job(), permit))
            .map_err(|_| ArgonError::Stopped)
    }

    /// Whether `password` matches the PHC string `hash`; a malformed hash never matches.
    pub async fn verify(&self, hash: &str, password: &str) -> Result<bool, ArgonError> {
        let (reply, answer) = oneshot::channel();
        self.submit(|| Job::Verify {
            hash: hash.to_string(),
            password: password.to_string(),
            reply,
        })
        .await?;
        answer.await.map_err(|_| ArgonError::Stopped)
    }

    /// A fresh Argon2id PHC string (default parameters, random salt) for `password`.
    pub async fn hash(&self, password: &str) -> Result<String, ArgonError> {
        let (reply, answer) = oneshot::channel();
        self.submit(|| Job::Hash {
            password: password.to_string(),
            reply,
        })
        .await?;
        answer
            .await
            .map_err(|_| ArgonError::Stopped)?
            .map_err(ArgonError::Hash)
    }
}

/// One thread: takes jobs until the pool is dropped, with one memory buffer for all.
fn worker(rx: &Mutex<mpsc::Receiver<(Job, OwnedSemaphorePermit)>>) {
    let mut memory: Vec<Block> = Vec::new();
    loop {
        let next = {
            let rx = rx.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            rx.recv()
        };
        let Ok((job, permit)) = next else { return };
        // The thread is free again before the caller hears back, so a caller that
        // submits its next job at once finds the permit.
        match job {
            Job::Verify {
                hash,
                password,
                reply,
            } => {
                let ok = verify_with(&mut memory, &hash, &password);
                drop(permit);
                let _ = reply.send(ok);
            }
            Job::Hash { password, reply } => {
                let hashed = hash_with(&mut memory, &password);
                drop(permit);
                let _ = reply.send(hashed);
            }
        }
    }
}

/// `memory` grown to at least `blocks` blocks (it never shrinks: it is reused).
fn blocks_of(memory: &mut Vec<Block>, blocks: usize) -> &mut [Block] {
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    &mut memory[..blocks]
}

/// Verify `password` against the PHC string `hash`, filling `memory`.
pub(crate) fn verify_with(memory: &mut Vec<Block>, hash: &str, password: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from).transpose() {
        Ok(version) => version.unwrap_or_default(),
        Err(_) => return false,
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    if params.m_cost() > M_COST_MAX_KIB {
        return false;
    }
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let blocks = params.block_count();
    let mut out = vec![0u8; expected.len()];
    let argon = Argon2::new(algorithm, version, params);
    if argon
        .hash_password_into_with_memory(
            password.as_bytes(),
            salt,
            &mut out,
            blocks_of(memory, blocks),
        )
        .is_err()
    {
        return false;
    }
    // `Output`'s equality is constant-time.
    Output::new(&out).is_ok_and(|computed| computed == expected)
}

/// Hash `password` with the default parameters and a fresh salt, filling `memory`.
pub(crate) fn hash_with(memory: &mut Vec<Block>, password: &str) -> Result<String, String> {
    let params = Params::default();
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_bytes = [0u8; 64];
    let salt_raw = salt
        .as_salt()
        .decode_b64(&mut salt_bytes)
        .map_err(|e| e.to_string())?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    let blocks = params.block_count();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password_into_with_memory(
            password.as_bytes(),
            salt_raw,
            &mut out,
            blocks_of(memory, blocks),
        )
        .map_err(|e| e.to_string())?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|e| e.to_string())?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| e.to_string())?),
    };
    Ok(phc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::PasswordVerifier;

    #[test]
    fn own_hashes_verify_with_the_library_and_back() {
        let mut memory = Vec::new();
        let ours = hash_with(&mut memory, "s3cret").unwrap();
        assert!(
            ours.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{ours}"
        );
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"s3cret", &parsed)
                .is_ok()
        );
        let theirs = crate::hash_password("s3cret").unwrap();
        assert!(verify_with(&mut memory, &theirs, "s3cret"));
        assert!(!verify_with(&mut memory, &theirs, "s3creT"));
        assert!(!verify_with(&mut memory, "$argon2id$garbage", "s3cret"));
        assert!(!verify_with(
            &mut memory,
            "$argon2id$v=19$m=4194304,t=2,p=1$c2FsdHNhbHQ$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "x"
        ));
        // One buffer, reused: exactly the default m_cost.
        assert_eq!(memory.len(), 19 * 1024);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_threads_run_and_waiters_give_up_busy() {
        let pool = ArgonPool::new(1, Duration::from_millis(1));
        let hash = pool.hash("pw").await.unwrap();
        // Two at once on one thread with a 1 ms wait: one of them is refused.
        let (a, b) = tokio::join!(pool.verify(&hash, "pw"), pool.verify(&hash, "no"));
        let results = [a, b];
        assert!(
            results.iter().any(|r| matches!(r, Err(ArgonError::Busy))),
            "{results:?}"
        );
        assert!(results.iter().any(|r| r.is_ok()), "{results:?}");
        let pool = ArgonPool::new(1, Duration::from_secs(30));
        let (a, b) = tokio::join!(pool.verify(&hash, "pw"), pool.verify(&hash, "no"));
        assert!(a.unwrap());
        assert!(!b.unwrap());
    }
}
