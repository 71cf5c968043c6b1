//! Lines on stdout, the interface scripts read.

/// Prints one line to stdout; a reader that went away (closed pipe) must
/// not take the node down with it, so write errors are ignored.
pub(crate) fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}
