//! Pure text helpers: URL encoding and masking buyer fields.

/// Percent-encode for a query string or form body (RFC 3986 unreserved kept as is).
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3 / 2);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Decode a percent-encoded component (`+` as space, as in forms).
pub fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex_val(bytes[i + 1]), hex_val(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|v| v as u8)
}

/// `k=v&k=v` with both sides encoded.
pub fn form_encode(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", url_encode(k), url_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Look up a query parameter in a URL.
pub fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (url_decode(k) == name).then(|| url_decode(v))
    })
}

/// Keep the first character and mask the rest: buyer names never leave a connector raw.
pub fn mask_name(name: &str) -> String {
    let mut chars = name.chars();
    match chars.next() {
        None => String::new(),
        Some(first) => {
            let rest = chars.count();
            format!("{first}{}", "*".repeat(rest.max(1)))
        }
    }
}

/// Keep the last four digits of a phone number.
pub fn mask_phone(phone: &str) -> String {
    let digits: Vec<char> = phone.chars().filter(|c| c.is_ascii_digit()).collect();
    if digits.len() <= 4 {
        return "*".repeat(digits.len());
    }
    let tail: String = digits[digits.len() - 4..].iter().collect();
    format!("{}{tail}", "*".repeat(digits.len() - 4))
}

/// Parse a decimal money string ("12.30", "7", "-0.5") into minor units with the given
/// number of fraction digits. Refuses more fraction digits than the currency has.
pub fn parse_minor(amount: &str, fraction_digits: u32) -> Result<i64, String> {
    let s = amount.trim();
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() && frac.is_empty() {
        return Err(format!("`{amount}` is not an amount"));
    }
    if !int.chars().all(|c| c.is_ascii_digit()) || !frac.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!("`{amount}` is not an amount"));
    }
    if frac.len() as u32 > fraction_digits {
        return Err(format!("`{amount}` has more than {fraction_digits} fraction digits"));
    }
    let scale = 10i64.pow(fraction_digits);
    let int_v: i64 = if int.is_empty() { 0 } else { int.parse().map_err(|_| format!("`{amount}` is too large"))? };
    let mut frac_v: i64 = if frac.is_empty() { 0 } else { frac.parse().map_err(|_| format!("`{amount}` is not an amount"))? };
    frac_v *= 10i64.pow(fraction_digits - frac.len() as u32);
    let v = int_v
        .checked_mul(scale)
        .and_then(|v| v.checked_add(frac_v))
        .ok_or_else(|| format!("`{amount}` is too large"))?;
    Ok(if neg { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_decodes() {
        assert_eq!(url_encode("2024-01-01 12:00:00"), "2024-01-01%2012%3A00%3A00");
        assert_eq!(url_decode("2024-01-01%2012%3A00%3A00"), "2024-01-01 12:00:00");
        assert_eq!(url_decode("a+b%2"), "a b%2");
        assert_eq!(query_param("http://x/y?limit=5&page_info=ab%3D", "page_info").as_deref(), Some("ab="));
        assert_eq!(query_param("http://x/y?limit=5", "page_info"), None);
    }

    #[test]
    fn masks() {
        assert_eq!(mask_name("Zhang San"), "Z********");
        assert_eq!(mask_name("王"), "王*");
        assert_eq!(mask_phone("+86 138-0013-8000"), "*********8000");
    }

    #[test]
    fn money() {
        assert_eq!(parse_minor("12.30", 2), Ok(1230));
        assert_eq!(parse_minor("7", 2), Ok(700));
        assert_eq!(parse_minor("-0.5", 2), Ok(-50));
        assert!(parse_minor("1.234", 2).is_err());
        assert!(parse_minor("abc", 2).is_err());
        assert!(parse_minor("", 2).is_err());
    }
}
