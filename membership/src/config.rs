//! Timing knobs of the membership protocol.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Timing of failure detection, probing and view changes, all in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MembershipConfig {
    /// How often a node pings its ring successor.
    pub ping_interval_ms: u64,
    /// No message from the ring successor for this long: one last ping, and
    /// if that too stays unanswered for `ping_interval_ms / 2`, a view change
    /// without it.
    pub suspect_after_ms: u64,
    /// How often seeds and known nodes outside the view are probed.
    pub probe_interval_ms: u64,
    /// How long a coordinator collects accepts before it commits.
    pub proposal_wait_ms: u64,
    /// How long an accepted proposal binds a node that has seen no commit for it.
    pub commit_wait_ms: u64,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig {
            ping_interval_ms: 500,
            suspect_after_ms: 2_000,
            probe_interval_ms: 1_000,
            proposal_wait_ms: 500,
            commit_wait_ms: 2_000,
        }
    }
}

/// A configuration the protocol cannot run with.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// An interval is zero, which would make the state machine spin.
    #[error("membership setting `{name}` must be at least 1 ms")]
    ZeroInterval {
        /// The offending field name.
        name: &'static str,
    },
    /// Suspecting sooner than two pings would suspect healthy nodes.
    #[error(
        "suspect_after_ms ({suspect_after_ms}) must be at least twice ping_interval_ms ({ping_interval_ms})"
    )]
    SuspectTooEager {
        /// The configured suspicion timeout.
        suspect_after_ms: u64,
        /// The configured ping interval.
        ping_interval_ms: u64,
    },
}

impl MembershipConfig {
    /// Checks that the settings make sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fields = [
            ("ping_interval_ms", self.ping_interval_ms),
            ("suspect_after_ms", self.suspect_after_ms),
            ("probe_interval_ms", self.probe_interval_ms),
            ("proposal_wait_ms", self.proposal_wait_ms),
            ("commit_wait_ms", self.commit_wait_ms),
        ];
        for (name, value) in fields {
            if value == 0 {
                return Err(ConfigError::ZeroInterval { name });
            }
        }
        if self.suspect_after_ms < self.ping_interval_ms.saturating_mul(2) {
            return Err(ConfigError::SuspectTooEager {
                suspect_after_ms: self.suspect_after_ms,
                ping_interval_ms: self.ping_interval_ms,
            });
        }
        Ok(())
    }

    /// The same settings with every zero interval raised to 1 ms, so an
    /// unvalidated config can never make the state machine spin.
    pub(crate) fn sanitized(mut self) -> Self {
        for value in [
            &mut self.ping_interval_ms,
            &mut self.suspect_after_ms,
            &mut self.probe_interval_ms,
            &mut self.proposal_wait_ms,
            &mut self.commit_wait_ms,
        ] {
            *value = (*value).max(1);
        }
        self
    }

    /// Spacing between coordinators ranked next to each other: long enough for
    /// the lower-ranked one's proposal to arrive first on a LAN or in the
    /// simulator, short enough that a merge still starts promptly.
    pub(crate) fn rank_step_ms(&self) -> u64 {
        (self.ping_interval_ms / 5).max(1)
    }

    /// How long a newcomer we heard from stays a reason to change the view.
    pub(crate) fn wanted_ttl_ms(&self) -> u64 {
        self.probe_interval_ms
            .saturating_mul(3)
            .saturating_add(self.suspect_after_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_brief() {
        let config = MembershipConfig::default();
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.ping_interval_ms, 500);
        assert_eq!(config.suspect_after_ms, 2_000);
        assert_eq!(config.probe_interval_ms, 1_000);
        assert_eq!(config.proposal_wait_ms, 500);
        assert_eq!(config.commit_wait_ms, 2_000);
    }

    #[test]
    fn zero_interval_is_rejected_and_sanitized() {
        let config = MembershipConfig {
            probe_interval_ms: 0,
            ..MembershipConfig::default()
        };
        assert_eq!(
            config.validate(),
            Err(ConfigError::ZeroInterval {
                name: "probe_interval_ms"
            })
        );
        assert_eq!(config.sanitized().probe_interval_ms, 1);
    }

    #[test]
    fn eager_suspicion_is_rejected() {
        let config = MembershipConfig {
            ping_interval_ms: 500,
            suspect_after_ms: 900,
            ..MembershipConfig::default()
        };
        assert!(matches!(
            config.validate(),
            Err(ConfigError::SuspectTooEager { .. })
        ));
    }
}
