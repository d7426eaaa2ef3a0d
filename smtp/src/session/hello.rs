//! EHLO and HELO.

use smtp_proto::{
    EXT_8BIT_MIME, EXT_CHUNKING, EXT_ENHANCED_STATUS_CODES, EXT_HELP, EXT_PIPELINING, EXT_SIZE,
    EXT_START_TLS, EhloResponse,
};

use super::transaction::Hello;
use super::{Flow, Session};
use crate::deliver::Deliver;

/// The extensions we offer.
const CAPABILITIES: u32 =
    EXT_PIPELINING | EXT_SIZE | EXT_8BIT_MIME | EXT_ENHANCED_STATUS_CODES | EXT_CHUNKING | EXT_HELP;

impl<D: Deliver> Session<D> {
    /// EHLO (`extended`) or HELO from a client calling itself `name`.
    pub(super) fn hello(&mut self, name: &str, extended: bool) -> Flow {
        // A new greeting ends any transaction in progress (RFC 5321 4.1.4).
        self.transaction = None;
        self.hello = Some(Hello {
            name: name.to_string(),
            extended,
        });
        if extended {
            let mut ehlo = EhloResponse::new(self.config.hostname.as_str());
            ehlo.capabilities = CAPABILITIES;
            // RFC 3207 4.2: not offered again once TLS is in use.
            if self.config.starttls.is_some() && self.tls.is_none() {
                ehlo.capabilities |= EXT_START_TLS;
            }
            ehlo.size = self.config.message_size_max;
            self.replies.push_ehlo(&ehlo);
        } else {
            let text = self.config.hostname.clone();
            self.replies.push_plain(250, &text);
        }
        Flow::Continue
    }
}
