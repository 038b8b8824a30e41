//! Orders from CSV: one row per order line, a header naming the columns (any order,
//! case-insensitive). Required: `order_id`, `status`, `updated_at`, `currency`, `total`,
//! `sku`, `quantity`, `unit_price`. Optional: `created_at` (else `updated_at`),
//! `platform_status` (else `status`), `line_id` (else the line's place in the order),
//! `title`, `buyer_name`, `buyer_phone` (masked before they are kept). Times are RFC 3339
//! with an offset; money is a decimal in the currency's unit (`12.50` USD, `1200` JPY).
//! Every row is checked before anything is taken; the first problems are reported
//! with their row numbers.

use berth_types::connector::OrderStatus;
use crate::store::{OrderData, OrderLineRecord};
use std::collections::BTreeMap;

const REQUIRED: [&str; 8] = ["order_id", "status", "updated_at", "currency", "total", "sku", "quantity", "unit_price"];
const OPTIONAL: [&str; 6] = ["created_at", "platform_status", "line_id", "title", "buyer_name", "buyer_phone"];
/// Problems reported at most.
const MAX_PROBLEMS: usize = 20;
/// Rows taken in one import.
pub const MAX_ROWS: usize = 100_000;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CsvError {
    #[error("the CSV has no header row; the first row names the columns: {}", REQUIRED.join(","))]
    Empty,
    #[error("the header lacks required columns: {missing} (required: {}; optional: {})", REQUIRED.join(", "), OPTIONAL.join(", "))]
    MissingColumns { missing: String },
    #[error("column `{0}` is not one berth reads (required: {req}; optional: {opt})", req = REQUIRED.join(", "), opt = OPTIONAL.join(", "))]
    UnknownColumn(String),
    #[error("more than {MAX_ROWS} rows; split the file")]
    TooManyRows,
    #[error("nothing was imported; fix these rows and import the whole file again:\n{}", .0.join("\n"))]
    Rows(Vec<String>),
}

/// Digits after the decimal point of a currency's minor unit.
fn exponent(currency: &str) -> u32 {
    match currency {
        "JPY" | "KRW" | "VND" | "CLP" | "ISK" | "UGX" | "XAF" | "XOF" | "PYG" | "RWF" => 0,
        "BHD" | "KWD" | "OMR" | "JOD" | "TND" | "IQD" | "LYD" => 3,
        _ => 2,
    }
}

/// `12.5` in USD → 1250; refuses more decimals than the currency has.
pub fn minor_units(amount: &str, currency: &str) -> Result<i64, String> {
    let exp = exponent(currency);
    let (neg, digits) = match amount.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, amount),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let ok = !whole.is_empty() && whole.bytes().all(|b| b.is_ascii_digit()) && frac.bytes().all(|b| b.is_ascii_digit());
    if !ok || frac.len() > exp as usize || whole.len() > 15 {
        return Err(format!("`{amount}` is not an amount in {currency} (a decimal with at most {exp} digits after the point)"));
    }
    let scaled = format!("{whole}{frac:0<width$}", width = exp as usize);
    let v: i64 = scaled.parse().map_err(|_| format!("`{amount}` is out of range"))?;
    Ok(if neg { -v } else { v })
}

/// An order time from a person's file: RFC 3339, from 2000 on and at most a day ahead of
/// the clock — the bounds a connector's orders keep (a far-future time would make every
/// later version from the platform look older, and never reach the ERP).
fn time_ms(value: &str) -> Result<i64, String> {
    let t = chrono::DateTime::parse_from_rfc3339(value)
        .map(|t| t.timestamp_millis())
        .map_err(|_| format!("`{value}` is not an RFC 3339 time with an offset (e.g. 2026-12-01T10:00:00+08:00)"))?;
    let now = berth_types::clock::now_ms();
    if t < berth_runtime::limits::EARLIEST_ORDER_MS || t > now.saturating_add(berth_runtime::limits::MAX_AHEAD_MS) {
        return Err(format!("`{value}` is outside 2000-01-01 .. a day from now"));
    }
    Ok(t)
}

fn mask_name(name: &str) -> String {
    match name.chars().next() {
        Some(c) => format!("{c}**"),
        None => String::new(),
    }
}

fn mask_phone(phone: &str) -> String {
    let digits: Vec<char> = phone.chars().filter(char::is_ascii_digit).collect();
    if digits.len() < 7 {
        return if digits.is_empty() { String::new() } else { "****".into() };
    }
    let head: String = digits[..3].iter().collect();
    let tail: String = digits[digits.len() - 4..].iter().collect();
    format!("{head}****{tail}")
}

/// The header's column names (lower case): none unknown, none required missing.
fn columns(reader: &mut csv::Reader<&[u8]>) -> Result<Vec<String>, CsvError> {
    let headers: Vec<String> = match reader.headers() {
        Ok(h) if !h.is_empty() && !(h.len() == 1 && h[0].is_empty()) => h.iter().map(|c| c.to_ascii_lowercase()).collect(),
        Ok(_) => return Err(CsvError::Empty),
        Err(e) => return Err(CsvError::Rows(vec![format!("header: {e}")])),
    };
    if let Some(unknown) = headers.iter().find(|h| !REQUIRED.contains(&h.as_str()) && !OPTIONAL.contains(&h.as_str())) {
        return Err(CsvError::UnknownColumn(unknown.clone()));
    }
    let missing: Vec<&str> = REQUIRED.iter().copied().filter(|r| !headers.iter().any(|h| h == r)).collect();
    if !missing.is_empty() {
        return Err(CsvError::MissingColumns { missing: missing.join(", ") });
    }
    Ok(headers)
}

/// The rows' problems, the first [`MAX_PROBLEMS`] of them and a count of the rest.
fn rows_error(mut problems: Vec<String>) -> CsvError {
    let more = problems.len().saturating_sub(MAX_PROBLEMS);
    problems.truncate(MAX_PROBLEMS);
    if more > 0 {
        problems.push(format!("… and {more} more"));
    }
    CsvError::Rows(problems)
}

/// Parse the whole file into orders (rows grouped by `order_id`, in first-seen order).
pub fn parse(text: &[u8]) -> Result<Vec<OrderData>, CsvError> {
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).flexible(false).from_reader(text);
    let headers = columns(&mut reader)?;
    let col = |name: &str| headers.iter().position(|h| h == name);
    let mut problems = Vec::new();
    let mut orders: Vec<OrderData> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    for (i, record) in reader.records().enumerate() {
        let row = i + 2; // the header is row 1
        if i >= MAX_ROWS {
            return Err(CsvError::TooManyRows);
        }
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                problems.push(format!("row {row}: {e}"));
                continue;
            }
        };
        let get = |name: &str| col(name).and_then(|c| record.get(c)).unwrap_or("").to_string();
        let mut bad = |what: String| problems.push(format!("row {row}: {what}"));
        let order_id = get("order_id");
        if order_id.is_empty() || order_id.len() > 128 {
            bad("order_id must be 1..=128 characters".into());
            continue;
        }
        let status = match get("status").to_ascii_lowercase().parse::<OrderStatus>() {
            Ok(s) => Some(s),
            Err(e) => {
                bad(format!("status `{}` is not one of {}", e.0, OrderStatus::ALL.map(OrderStatus::as_str).join(", ")));
                None
            }
        };
        let currency = get("currency").to_ascii_uppercase();
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            bad(format!("currency `{currency}` is not an ISO 4217 code"));
            continue;
        }
        let updated = time_ms(&get("updated_at")).map_err(|e| bad(format!("updated_at {e}"))).ok();
        let created = match get("created_at").as_str() {
            "" => updated,
            c => time_ms(c).map_err(|e| bad(format!("created_at {e}"))).ok(),
        };
        let total = minor_units(&get("total"), &currency).map_err(|e| bad(format!("total {e}"))).ok();
        let unit_price = minor_units(&get("unit_price"), &currency).map_err(|e| bad(format!("unit_price {e}"))).ok();
        let quantity = get("quantity").parse::<u32>().ok().filter(|q| *q > 0);
        if quantity.is_none() {
            bad(format!("quantity `{}` is not a whole number above 0", get("quantity")));
        }
        let sku = get("sku");
        if sku.is_empty() {
            bad("sku is empty".into());
        }
        let (Some(status), Some(updated), Some(created), Some(total), Some(unit_price), Some(quantity)) = (status, updated, created, total, unit_price, quantity) else {
            continue;
        };
        let n = match index.get(&order_id) {
            Some(&n) => {
                let o = &orders[n];
                if o.updated_at_ms != updated || o.currency != currency || o.total_minor != total || o.status != status {
                    bad(format!("order `{order_id}` has another status, updated_at, currency or total on an earlier row; rows of one order must agree"));
                    continue;
                }
                n
            }
            None => {
                index.insert(order_id.clone(), orders.len());
                let platform_status = match get("platform_status") {
                    s if s.is_empty() => status.to_string(),
                    s => s,
                };
                orders.push(OrderData {
                    order_id: order_id.clone(),
                    status,
                    platform_status,
                    created_at_ms: created,
                    updated_at_ms: updated,
                    currency: currency.clone(),
                    total_minor: total,
                    lines: Vec::new(),
                    buyer_name_masked: mask_name(&get("buyer_name")),
                    buyer_phone_masked: mask_phone(&get("buyer_phone")),
                    raw: serde_json::Value::Null,
                });
                orders.len() - 1
            }
        };
        let o = &mut orders[n];
        let line_id = match get("line_id") {
            l if l.is_empty() => (o.lines.len() + 1).to_string(),
            l => l,
        };
        if o.lines.iter().any(|l| l.line_id == line_id) {
            bad(format!("order `{order_id}` has line_id `{line_id}` twice"));
            continue;
        }
        o.lines.push(OrderLineRecord { line_id, sku: sku.clone(), title: get("title"), quantity, unit_price_minor: unit_price });
    }
    if !problems.is_empty() {
        return Err(rows_error(problems));
    }
    for o in &mut orders {
        o.raw = serde_json::json!({ "source": "csv-import", "lines": o.lines.len() });
    }
    Ok(orders)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "order_id,status,updated_at,currency,total,sku,quantity,unit_price,title,buyer_name,buyer_phone\n";

    #[test]
    fn rows_group_into_orders_with_exact_money() {
        let text = format!(
            "{HEADER}A-1,paid,2026-12-01T10:00:00+08:00,USD,25.50,SKU-1,2,10.00,\"Mug, blue\",Alice Smith,+1 555 123 4567\n\
             A-1,paid,2026-12-01T10:00:00+08:00,USD,25.50,SKU-2,1,5.5,Spoon,,\n\
             B-7,shipped,2026-12-01T11:00:00Z,JPY,1200,SKU-9,3,400,Tea,,\n"
        );
        let orders = parse(text.as_bytes()).unwrap();
        assert_eq!(orders.len(), 2);
        let a = &orders[0];
        assert_eq!((a.order_id.as_str(), a.total_minor, a.updated_at_ms, a.lines.len()), ("A-1", 2550, 1_796_090_400_000, 2));
        assert_eq!((a.lines[0].title.as_str(), a.lines[1].unit_price_minor, a.lines[1].line_id.as_str()), ("Mug, blue", 550, "2"));
        assert_eq!((a.buyer_name_masked.as_str(), a.buyer_phone_masked.as_str()), ("A**", "155****4567"));
        assert_eq!((orders[1].total_minor, orders[1].currency.as_str(), orders[1].status.as_str()), (1200, "JPY", "shipped"));
    }

    #[test]
    fn times_keep_to_the_bounds_connector_orders_keep() {
        for (when, ok) in [("2026-12-01T10:00:00Z", true), ("9999-01-01T00:00:00Z", false), ("1999-12-31T23:59:59Z", false), ("1970-01-01T00:00:00Z", false)] {
            let text = format!("{HEADER}A-1,paid,{when},USD,1,SKU-1,1,1,x,,\n");
            match parse(text.as_bytes()) {
                Ok(_) => assert!(ok, "{when} was taken"),
                Err(CsvError::Rows(p)) => assert!(!ok && p[0].contains("is outside 2000-01-01 .. a day from now"), "{when}: {p:?}"),
                Err(e) => panic!("{when}: {e}"),
            }
        }
    }

    #[test]
    fn every_bad_row_is_named_and_nothing_is_taken() {
        let text = format!(
            "{HEADER}A-1,paid,2026-12-01 10:00,USD,25.505,SKU-1,0,10,x,,\n\
             A-2,lost,2026-12-01T10:00:00Z,USD,1,SKU-1,1,1,x,,\n\
             A-3,paid,2026-12-01T10:00:00Z,USD,1,SKU-1,1,1,x,,\n\
             A-3,paid,2026-12-01T10:00:00Z,USD,2,SKU-2,1,1,x,,\n"
        );
        let CsvError::Rows(problems) = parse(text.as_bytes()).unwrap_err() else { panic!() };
        assert!(problems[0].starts_with("row 2: updated_at `2026-12-01 10:00` is not an RFC 3339 time"), "{problems:?}");
        assert!(problems[1].starts_with("row 2: total `25.505` is not an amount in USD"), "{problems:?}");
        assert!(problems[2].starts_with("row 2: quantity `0`"), "{problems:?}");
        assert!(problems[3].starts_with("row 3: status `lost` is not one of"), "{problems:?}");
        assert!(problems[4].starts_with("row 5: order `A-3` has another status, updated_at, currency or total"), "{problems:?}");
        assert_eq!(problems.len(), 5);
        assert_eq!(parse(b"order_id,sku\n").unwrap_err().to_string().split(" (").next().unwrap(), "the header lacks required columns: status, updated_at, currency, total, quantity, unit_price");
        assert!(parse(format!("{}colour\n", HEADER.trim_end().to_string() + ",").as_bytes()).unwrap_err().to_string().starts_with("column `colour` is not one berth reads"));
        assert_eq!(parse(b"").unwrap_err(), CsvError::Empty);
        assert_eq!(minor_units("-3.1", "KWD"), Ok(-3100));
    }
}
