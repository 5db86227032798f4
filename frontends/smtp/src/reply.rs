//! SMTP replies (RFC 5321 §4.2) with enhanced status codes (RFC 3463, RFC 2034).

/// One reply: a code, an optional enhanced status code, and its lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// The enhanced status code (`5.1.1`), on every line.
    pub status: Option<&'static str>,
    /// The text lines (at least one).
    pub lines: Vec<String>,
}

impl Reply {
    /// A one-line reply.
    pub fn new(code: u16, status: Option<&'static str>, text: impl Into<String>) -> Self {
        Reply {
            code,
            status,
            lines: vec![text.into()],
        }
    }

    /// A multi-line reply (EHLO's keywords).
    pub fn lines(code: u16, status: Option<&'static str>, lines: Vec<String>) -> Self {
        Reply {
            code,
            status,
            lines,
        }
    }

    /// Append the reply's wire form: `250-first`, …, `250 last`, each line CRLF-terminated.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            // No line break may reach the client inside a reply line.
            let text: String = line.chars().filter(|c| *c != '\r' && *c != '\n').collect();
            let status = self.status.map(|s| format!("{s} ")).unwrap_or_default();
            out.extend_from_slice(format!("{}{sep}{status}{text}\r\n", self.code).as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_line_replies_mark_every_line_but_the_last() {
        let mut out = Vec::new();
        Reply::lines(250, None, vec!["a".into(), "b".into(), "c".into()]).write_to(&mut out);
        Reply::new(550, Some("5.1.1"), "no\r\nsuch").write_to(&mut out);
        assert_eq!(out, b"250-a\r\n250-b\r\n250 c\r\n550 5.1.1 nosuch\r\n");
    }
}
