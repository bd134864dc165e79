//! Small helpers shared by the commands.

use std::error::Error;

/// An error and its causes, joined with `: `, for one log line.
pub fn error_chain(e: &dyn Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}
