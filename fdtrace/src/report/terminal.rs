//! What the text renderers write goes through [`Terminal`]: the names a
//! report holds come from the traced program (a path, a function name) or
//! from a trace file someone sent, and a terminal must not take them for
//! commands. Control characters become `?`; only the colour sequences the
//! renderers add themselves pass, and only when colour is on.

use std::io::{self, Write};

/// The sequences [`super::text::Style`] writes.
const COLOURS: [&str; 3] = ["\x1b[1m", "\x1b[1;31m", "\x1b[0m"];

/// A writer that replaces control characters (C0 but newline and tab, DEL,
/// C1) with `?`.
pub struct Terminal<W> {
    inner: W,
    color: bool,
}

impl<W: Write> Terminal<W> {
    pub fn new(inner: W, color: bool) -> Self {
        Terminal { inner, color }
    }
}

impl<W: Write> Write for Terminal<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // The renderers write whole `str`s; anything else is shown lossily.
        let text = String::from_utf8_lossy(buf);
        let mut clean = String::with_capacity(text.len());
        let mut rest: &str = &text;
        while let Some(c) = rest.chars().next() {
            if c == '\x1b'
                && self.color
                && let Some(seq) = COLOURS.iter().find(|s| rest.starts_with(**s))
            {
                clean.push_str(seq);
                rest = &rest[seq.len()..];
                continue;
            }
            let unsafe_char =
                (c.is_control() && c != '\n' && c != '\t') || ('\u{80}'..='\u{9f}').contains(&c);
            clean.push(if unsafe_char { '?' } else { c });
            rest = &rest[c.len_utf8()..];
        }
        self.inner.write_all(clean.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn through(color: bool, s: &str) -> String {
        let mut out = Vec::new();
        Terminal::new(&mut out, color)
            .write_all(s.as_bytes())
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn control_characters_from_a_trace_cannot_reach_the_terminal() {
        let hostile = "/tmp/\x1b]0;owned\x07x\x1b[2J\u{9b}31m\r\n";
        assert_eq!(through(false, hostile), "/tmp/?]0;owned?x?[2J?31m?\n");
        assert_eq!(through(true, hostile), "/tmp/?]0;owned?x?[2J?31m?\n");
        // Colour, when on, passes; without it, even ours is shown as text.
        assert_eq!(
            through(true, "\x1b[1mleak\x1b[0m\tok"),
            "\x1b[1mleak\x1b[0m\tok"
        );
        assert_eq!(through(false, "\x1b[1mleak"), "?[1mleak");
        assert_eq!(through(false, "ünïcode → fine"), "ünïcode → fine");
    }
}
