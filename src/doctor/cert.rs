//! Just enough X.509 to tell a person which certificate Dify's server presented: subject,
//! issuer, names and validity, read from the DER that the TLS handshake already gave us.
//! A full X.509 crate would be ten times the code for four fields; verification itself is
//! done by the TLS stack, never here.

use std::fmt;

/// What `ping-dify` shows about a server certificate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct CertSummary {
    pub subject: String,
    pub issuer: String,
    /// DNS names from the subjectAltName extension.
    pub names: Vec<String>,
    /// `2036-11-23T05:52:48Z`.
    pub not_before: String,
    pub not_after: String,
    /// Seconds since the Unix epoch, for computing days left.
    #[serde(skip)]
    pub not_after_unix: i64,
}

impl CertSummary {
    /// Whole days until the certificate expires (negative once expired).
    pub fn days_left(&self, now_unix: i64) -> i64 {
        (self.not_after_unix - now_unix).div_euclid(86_400)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CertError(&'static str);

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot read the certificate: {}", self.0)
    }
}

impl std::error::Error for CertError {}

/// One DER element: its tag and its content.
struct Tlv<'a> {
    tag: u8,
    body: &'a [u8],
}

/// Reads DER elements one after another from a byte slice.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn next(&mut self) -> Result<Tlv<'a>, CertError> {
        let (&tag, rest) = self.rest.split_first().ok_or(CertError("truncated"))?;
        let (&first, mut rest) = rest.split_first().ok_or(CertError("truncated"))?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 || rest.len() < count {
                return Err(CertError("bad length"));
            }
            let len = rest[..count].iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            rest = &rest[count..];
            len
        };
        if rest.len() < len {
            return Err(CertError("truncated"));
        }
        let (body, rest) = rest.split_at(len);
        self.rest = rest;
        Ok(Tlv { tag, body })
    }

    fn take(&mut self, tag: u8) -> Result<&'a [u8], CertError> {
        let tlv = self.next()?;
        if tlv.tag != tag {
            return Err(CertError("unexpected element"));
        }
        Ok(tlv.body)
    }
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const OCTET_STRING: u8 = 0x04;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
/// `[0]` (the version), `[3]` (the extensions) and a SAN `dNSName` (`[2]`, primitive).
const CONTEXT_0: u8 = 0xa0;
const CONTEXT_3: u8 = 0xa3;
const DNS_NAME: u8 = 0x82;

const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
const OID_O: &[u8] = &[0x55, 0x04, 0x0a];
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];

/// Reads subject, issuer, validity and DNS names from a DER certificate.
pub(crate) fn summarize(der: &[u8]) -> Result<CertSummary, CertError> {
    let certificate = Reader::new(der).take(SEQUENCE)?;
    let mut tbs = Reader::new(Reader::new(certificate).take(SEQUENCE)?);
    let mut element = tbs.next()?;
    if element.tag == CONTEXT_0 {
        element = tbs.next()?; // the serial number follows the version
    }
    let _serial = element;
    tbs.take(SEQUENCE)?; // signature algorithm
    let issuer = name(tbs.take(SEQUENCE)?)?;
    let mut validity = Reader::new(tbs.take(SEQUENCE)?);
    let not_before = time(validity.next()?)?;
    let not_after = time(validity.next()?)?;
    let subject = name(tbs.take(SEQUENCE)?)?;
    tbs.take(SEQUENCE)?; // public key
    let mut names = Vec::new();
    while !tbs.is_empty() {
        let element = tbs.next()?;
        if element.tag == CONTEXT_3 {
            names = alt_names(element.body)?;
        }
    }
    Ok(CertSummary {
        subject,
        issuer,
        names,
        not_before: iso(not_before),
        not_after: iso(not_after),
        not_after_unix: not_after,
    })
}

/// `CN=dify.example.com, O=Example` (only the parts people recognise).
fn name(body: &[u8]) -> Result<String, CertError> {
    let mut parts = Vec::new();
    let mut rdns = Reader::new(body);
    while !rdns.is_empty() {
        let mut set = Reader::new(rdns.take(SET)?);
        while !set.is_empty() {
            let mut pair = Reader::new(set.take(SEQUENCE)?);
            let oid = pair.take(OID)?;
            let value = pair.next()?;
            let label = match oid {
                OID_CN => "CN",
                OID_O => "O",
                _ => continue,
            };
            parts.push((label, string(&value)));
        }
    }
    // CN first: it is what people compare with the host name.
    parts.sort_by_key(|(label, _)| *label != "CN");
    Ok(parts.iter().map(|(label, value)| format!("{label}={value}")).collect::<Vec<_>>().join(", "))
}

fn string(value: &Tlv<'_>) -> String {
    if value.tag == 0x1e {
        // BMPString: UTF-16 big-endian.
        let units: Vec<u16> = value.body.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
        return String::from_utf16_lossy(&units);
    }
    String::from_utf8_lossy(value.body).into_owned()
}

fn alt_names(extensions: &[u8]) -> Result<Vec<String>, CertError> {
    let mut list = Reader::new(Reader::new(extensions).take(SEQUENCE)?);
    while !list.is_empty() {
        let mut extension = Reader::new(list.take(SEQUENCE)?);
        let oid = extension.take(OID)?;
        let mut value = extension.next()?;
        if value.tag == 0x01 {
            value = extension.next()?; // the `critical` flag
        }
        if oid != OID_SAN || value.tag != OCTET_STRING {
            continue;
        }
        let mut general = Reader::new(Reader::new(value.body).take(SEQUENCE)?);
        let mut names = Vec::new();
        while !general.is_empty() {
            let name = general.next()?;
            if name.tag == DNS_NAME {
                names.push(String::from_utf8_lossy(name.body).into_owned());
            }
        }
        return Ok(names);
    }
    Ok(Vec::new())
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) as Unix seconds.
fn time(value: Tlv<'_>) -> Result<i64, CertError> {
    let text = std::str::from_utf8(value.body).map_err(|_| CertError("bad time"))?;
    let digits = text.strip_suffix('Z').ok_or(CertError("time is not UTC"))?;
    let (year, rest) = match value.tag {
        UTC_TIME if digits.len() == 12 => {
            let yy = number(&digits[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
        }
        GENERALIZED_TIME if digits.len() == 14 => (number(&digits[..4])?, &digits[4..]),
        _ => return Err(CertError("bad time")),
    };
    let [month, day, hour, minute, second] =
        [0, 2, 4, 6, 8].map(|i| rest.get(i..i + 2).map(number).unwrap_or(Err(CertError("bad time"))));
    let days = days_from_civil(year, month?, day?);
    Ok(days * 86_400 + hour? * 3600 + minute? * 60 + second?)
}

fn number(text: &str) -> Result<i64, CertError> {
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CertError("bad time"));
    }
    text.parse().map_err(|_| CertError("bad time"))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix seconds as `2036-11-23T05:52:48Z` (shared with the APIs' timestamps).
pub(crate) use crate::api::iso;

#[cfg(test)]
mod tests {
    use base64::Engine;

    use super::*;
    use crate::api::civil_from_days;

    /// `openssl req -x509 -subj "/O=Example Org/CN=dify.example.com"` with two DNS names.
    const SELF_SIGNED: &str = "MIIB5zCCAYygAwIBAgIUCVbZWnW9pjOU7ILy9CGePeQbAqgwCgYIKoZIzj0EAwIwMTEUMBIGA1UECgwLRXhhbXBsZSBPcmcxGTAXBgNVBAMMEGRpZnkuZXhhbXBsZS5jb20wHhcNMjYxMTI2MDU1MjQ4WhcNMzYxMTIzMDU1MjQ4WjAxMRQwEgYDVQQKDAtFeGFtcGxlIE9yZzEZMBcGA1UEAwwQZGlmeS5leGFtcGxlLmNvbTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABIjJrySXL/E6zsOcVjWOxkIki7RG9LvW/SHbUfyc01SLOKJwAd/OauUpbC8qEEpeKHEhRDUEQVI0e3l7INrQ3wSjgYEwfzAdBgNVHQ4EFgQUvXJRNiGk/K5tAV+6ij9uMZooiuwwHwYDVR0jBBgwFoAUvXJRNiGk/K5tAV+6ij9uMZooiuwwDwYDVR0TAQH/BAUwAwEB/zAsBgNVHREEJTAjghBkaWZ5LmV4YW1wbGUuY29tgg9hcGkuZXhhbXBsZS5jb20wCgYIKoZIzj0EAwIDSQAwRgIhAPdzKzUI2hBJY1syVcguhgV9llwrQZNw3lJ6mR4QNC29AiEA7Ve+ho0YyNQ+35pkuDvJ9vnw/DGShqeWerXz8+uFC+U=";

    #[test]
    fn reads_what_openssl_shows() {
        let der = base64::engine::general_purpose::STANDARD.decode(SELF_SIGNED).expect("base64");
        let cert = summarize(&der).expect("certificate");
        assert_eq!(cert.subject, "CN=dify.example.com, O=Example Org");
        assert_eq!(cert.issuer, cert.subject);
        assert_eq!(cert.names, ["dify.example.com", "api.example.com"]);
        assert_eq!(cert.not_before, "2026-11-26T05:52:48Z");
        assert_eq!(cert.not_after, "2036-11-23T05:52:48Z");
        let day_before = cert.not_after_unix - 86_400;
        assert_eq!(cert.days_left(day_before), 1);
        assert_eq!(cert.days_left(cert.not_after_unix + 1), -1);
    }

    #[test]
    fn garbage_and_truncation_are_errors_not_panics() {
        let der = base64::engine::general_purpose::STANDARD.decode(SELF_SIGNED).expect("base64");
        for cut in [0, 1, 2, 10, 100, der.len() - 1] {
            assert!(summarize(&der[..cut]).is_err(), "cut at {cut}");
        }
        assert!(summarize(b"\x30\x84\xff\xff\xff\xff").is_err());
        assert!(summarize(b"not a certificate").is_err());
    }

    #[test]
    fn dates_round_trip() {
        for unix in [0_i64, 951_782_400, 2_000_000_000, -86_400] {
            let (y, m, d) = civil_from_days(unix.div_euclid(86_400));
            assert_eq!(days_from_civil(y, m, d) * 86_400, unix - unix.rem_euclid(86_400));
        }
        assert_eq!(iso(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso(951_782_400), "2000-02-29T00:00:00Z");
    }
}
