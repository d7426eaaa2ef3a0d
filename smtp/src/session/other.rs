//! RSET and QUIT; the one-line answers (NOOP, VRFY, EXPN, HELP) are in the dispatcher.

use super::{Flow, Session};
use crate::deliver::Deliver;
use crate::reply;

impl<D: Deliver> Session<D> {
    /// RSET: forget the transaction, keep the greeting.
    pub(super) fn rset(&mut self) -> Flow {
        self.transaction = None;
        self.answer(reply::OK)
    }

    /// QUIT: say goodbye and close.
    pub(super) fn quit(&mut self) -> Flow {
        let text = format!("{} closing connection", self.config.hostname);
        self.replies.push_text(221, [2, 0, 0], &text);
        Flow::Close
    }
}
