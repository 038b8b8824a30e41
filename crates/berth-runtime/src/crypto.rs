//! Signing primitives for `berth:connector/crypto`, computed natively: pure functions
//! over the bytes given, so the runtime serves them itself (digests from berth-types).

use base64::Engine as _;

pub use berth_types::digest::{hmac_md5, hmac_sha256, md5, sha256};

pub fn base64_encode(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

pub fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("not standard base64: {e}"))
}

pub fn hex_encode(data: &[u8], upper: bool) -> String {
    if upper {
        hex::encode_upper(data)
    } else {
        hex::encode(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shopify_webhook_vector() {
        // platforms.md §11.6: secret `test_secret`, body `{"id":1}`.
        let mac = hmac_sha256(b"test_secret", br#"{"id":1}"#);
        assert_eq!(base64_encode(&mac), "AsdkItclzjG20ZJ6IZQVt1E9shG3lPvXw9/GqURv0T4=");
    }

    #[test]
    fn jd_md5_vector() {
        // platforms.md §2.1, official JD vector: MD5(secret + payload + secret), upper hex.
        let payload = r#"360buy_param_json{"end_date":null,"optional_fields":null,"order_state":"WAIT_SELLER_STOCK_OUT","page":"1","page_size":"200","start_date":null}access_tokenyourtokenapp_keyyourappkeymethodjingdong.pop.order.searchtimestamp2021-05-07 09:20:39.683+0800v2.0"#;
        let s = format!("yourappSecret{payload}yourappSecret");
        assert_eq!(hex_encode(&md5(s.as_bytes()), true), "D70825340F4084360B9362B60DFD7930");
    }

    #[test]
    fn base64_round_trip_and_errors() {
        assert_eq!(base64_decode(&base64_encode(b"berth")).unwrap(), b"berth");
        assert!(base64_decode("***").is_err());
        assert_eq!(hex_encode(&[0xab, 0x01], false), "ab01");
        assert_eq!(sha256(b"").len(), 32);
        assert_eq!(hmac_md5(b"k", b"d").len(), 16);
    }
}
