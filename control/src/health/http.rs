//! The few bytes of HTTP/1.x a health check needs: the request, the status line, and the body's
//! framing (Content-Length, chunked, or up to the close).
//!
//! A hand-written client rather than a crate: a check sends one plain-text request per connection
//! (no TLS, no keep-alive, no redirects, no compression) and reads one bounded answer, so an HTTP
//! library would bring a connection pool and a dozen dependencies to do what these hundred lines
//! do. Parsing is pure, on byte slices, so it is tested without sockets.

use std::net::IpAddr;

/// Most header bytes read before the response is called malformed.
pub(super) const MAX_HEAD: usize = 16 * 1024;
/// Most body bytes read when the check looks for `expect_body`; the rest of the body is ignored.
pub(super) const MAX_BODY: usize = 64 * 1024;

/// The request line and headers for `GET path` on `addr`.
pub(super) fn request(path: &str, addr: IpAddr) -> Vec<u8> {
    // RFC 9112 section 3.2: an IPv6 literal in Host is bracketed.
    let host = match addr {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: fwd-health\r\n\r\n")
        .into_bytes()
}

/// Why a response is not HTTP/1.x.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Malformed {
    StatusLine,
    HeadTooLong,
    Chunk,
}

impl Malformed {
    pub(super) const fn text(self) -> &'static str {
        match self {
            Malformed::StatusLine => "malformed status line",
            Malformed::HeadTooLong => "response headers longer than 16 KiB",
            Malformed::Chunk => "malformed chunked body",
        }
    }
}

/// The status code, once `buf` holds the whole status line (`Ok(None)`: read more).
pub(super) fn status(buf: &[u8]) -> Result<Option<u16>, Malformed> {
    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
        return if buf.len() > MAX_HEAD { Err(Malformed::HeadTooLong) } else { Ok(None) };
    };
    let line = buf.get(..end).unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    // "HTTP/1.1 200 OK"; the reason phrase may be empty or absent.
    let rest = line.strip_prefix(b"HTTP/1.").ok_or(Malformed::StatusLine)?;
    let code = match rest {
        [minor, b' ', a, b, c, tail @ ..]
            if minor.is_ascii_digit() && (tail.is_empty() || tail[0] == b' ') =>
        {
            [*a, *b, *c]
        }
        _ => return Err(Malformed::StatusLine),
    };
    if !code.iter().all(u8::is_ascii_digit) {
        return Err(Malformed::StatusLine);
    }
    Ok(Some(code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'))))
}

/// How the body after the head is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Framing {
    Length(usize),
    Chunked,
    /// Up to the close (HTTP/1.0 style, or `Connection: close` without a length).
    Close,
}

/// The head's length (up to and including the empty line) and the body's framing.
pub(super) type Head = (usize, Framing);

/// The head, once `buf` holds all of it (`Ok(None)`: read more).
pub(super) fn head(buf: &[u8]) -> Result<Option<Head>, Malformed> {
    let Some(end) = find(buf, b"\r\n\r\n").map(|i| i + 4).or_else(|| find(buf, b"\n\n").map(|i| i + 2))
    else {
        return if buf.len() > MAX_HEAD { Err(Malformed::HeadTooLong) } else { Ok(None) };
    };
    let mut framing = Framing::Close;
    let text = buf.get(..end).unwrap_or_default();
    for line in text.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (name, value) = line.split_at(colon);
        let value = value.get(1..).unwrap_or_default().trim_ascii();
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // RFC 9112 section 6.3: chunked, when present, wins over Content-Length.
            if value.to_ascii_lowercase().ends_with(b"chunked") {
                framing = Framing::Chunked;
            }
        } else if name.eq_ignore_ascii_case(b"content-length") && framing != Framing::Chunked {
            if let Some(length) = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()) {
                framing = Framing::Length(length);
            }
        }
    }
    Ok(Some((end, framing)))
}

/// The body's bytes decoded from `raw` (what followed the head), and whether they are complete.
/// `raw` may be cut anywhere; an incomplete chunked body yields the chunks received whole.
pub(super) fn body(raw: &[u8], framing: Framing) -> Result<(Vec<u8>, bool), Malformed> {
    match framing {
        Framing::Length(length) => Ok((raw.get(..length).unwrap_or(raw).to_vec(), raw.len() >= length)),
        Framing::Close => Ok((raw.to_vec(), false)),
        Framing::Chunked => {
            let mut out = Vec::new();
            let mut rest = raw;
            loop {
                let Some(line_end) = find(rest, b"\n") else { return Ok((out, false)) };
                let line = rest.get(..line_end).unwrap_or_default();
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                // Chunk extensions (";name=value") are allowed and ignored.
                let size = line.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
                let size = std::str::from_utf8(size)
                    .ok()
                    .and_then(|s| usize::from_str_radix(s, 16).ok())
                    .ok_or(Malformed::Chunk)?;
                rest = rest.get(line_end + 1..).unwrap_or_default();
                if size == 0 {
                    return Ok((out, true));
                }
                let Some(data) = rest.get(..size) else { return Ok((out, false)) };
                out.extend_from_slice(data);
                rest = rest.get(size..).unwrap_or_default();
                rest = rest.strip_prefix(b"\r\n").or_else(|| rest.strip_prefix(b"\n")).unwrap_or(rest);
            }
        }
    }
}

/// Whether `haystack` contains `needle` (an empty needle is everywhere).
pub(super) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || find(haystack, needle).is_some()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_brackets_ipv6_hosts() {
        let v4 = request("/healthz", "198.18.0.1".parse().unwrap());
        assert_eq!(
            v4,
            b"GET /healthz HTTP/1.1\r\nHost: 198.18.0.1\r\nConnection: close\r\nUser-Agent: fwd-health\r\n\r\n"
        );
        let v6 = String::from_utf8(request("/", "fd00:18::1".parse().unwrap())).unwrap();
        assert!(v6.contains("\r\nHost: [fd00:18::1]\r\n"), "{v6}");
    }

    #[test]
    fn status_lines() {
        type Parsed = Result<Option<u16>, Malformed>;
        let cases: [(&[u8], Parsed); 10] = [
            (b"HTTP/1.1 200 OK\r\n", Ok(Some(200))),
            (b"HTTP/1.0 503 Service Unavailable\r\nServer: x\r\n", Ok(Some(503))),
            (b"HTTP/1.1 204\r\n", Ok(Some(204))),
            (b"HTTP/1.1 404 \n", Ok(Some(404))),
            (b"HTTP/1.1 200 O", Ok(None)),
            (b"", Ok(None)),
            (b"HTTP/2 200\r\n", Err(Malformed::StatusLine)),
            (b"SSH-2.0-OpenSSH\r\n", Err(Malformed::StatusLine)),
            (b"HTTP/1.1 20x OK\r\n", Err(Malformed::StatusLine)),
            (b"HTTP/1.1 2000 OK\r\n", Err(Malformed::StatusLine)),
        ];
        for (input, expected) in cases {
            assert_eq!(status(input), expected, "{:?}", String::from_utf8_lossy(input));
        }
        assert_eq!(status(&vec![b'x'; MAX_HEAD + 1]), Err(Malformed::HeadTooLong));
    }

    #[test]
    fn head_framing() {
        let cases: [(&[u8], Option<Head>); 5] = [
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", Some((38, Framing::Length(5)))),
            (b"HTTP/1.1 200 OK\r\ncontent-length:5\r\n\r\n", Some((37, Framing::Length(5)))),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                Some((66, Framing::Chunked)),
            ),
            (b"HTTP/1.0 200 OK\n\nbody", Some((17, Framing::Close))),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n", None),
        ];
        for (input, expected) in cases {
            assert_eq!(head(input), Ok(expected), "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn bodies_by_framing() {
        assert_eq!(body(b"hello world", Framing::Length(5)), Ok((b"hello".to_vec(), true)));
        assert_eq!(body(b"hel", Framing::Length(5)), Ok((b"hel".to_vec(), false)));
        assert_eq!(body(b"anything", Framing::Close), Ok((b"anything".to_vec(), false)));
        // "o" and "k" in separate chunks: only the decoded body contains "ok".
        let chunked = b"3\r\nall\r\n2;ext=1\r\n o\r\n1\r\nk\r\n0\r\n\r\n";
        assert_eq!(body(chunked, Framing::Chunked), Ok((b"all ok".to_vec(), true)));
        assert_eq!(body(&chunked[..20], Framing::Chunked), Ok((b"all o".to_vec(), false)));
        assert_eq!(body(b"zz\r\nab\r\n", Framing::Chunked), Err(Malformed::Chunk));
    }

    #[test]
    fn contains_finds_substrings() {
        assert!(contains(b"status: ok", b"ok"));
        assert!(contains(b"", b""));
        assert!(!contains(b"o k", b"ok"));
        assert!(!contains(b"o", b"ok"));
    }
}
