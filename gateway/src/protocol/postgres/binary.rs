//! PostgreSQL's binary format, read as text: what the record and an approver see of a value a
//! client sent or the server answered in binary (tokio-postgres, JDBC and asyncpg bind and fetch
//! binary by default), and the digits the detectors look at. Only the types whose binary form
//! is fixed and documented (`src/backend/utils/adt/*send` in PostgreSQL) are decoded; anything
//! else stays opaque and is shown by its size.

/// Type OIDs whose binary form is the text itself (text, varchar, bpchar, name, json, xml,
/// unknown, "char").
pub const TEXT_LIKE: &[u32] = &[25, 1043, 1042, 19, 114, 142, 705, 18];
pub const BOOL: u32 = 16;
pub const BYTEA: u32 = 17;
pub const INT8: u32 = 20;
pub const INT2: u32 = 21;
pub const INT4: u32 = 23;
pub const OID: u32 = 26;
pub const FLOAT4: u32 = 700;
pub const FLOAT8: u32 = 701;
pub const DATE: u32 = 1082;
pub const TIMESTAMP: u32 = 1114;
pub const TIMESTAMPTZ: u32 = 1184;
pub const NUMERIC: u32 = 1700;
pub const UUID: u32 = 2950;
pub const JSONB: u32 = 3802;

/// Days from 1970-01-01 to PostgreSQL's epoch, 2000-01-01.
const POSTGRES_EPOCH_DAYS: i64 = 10_957;
const MICROS_PER_DAY: i64 = 86_400_000_000;

/// The value as PostgreSQL would print it in text format, when its type is one decoded here and
/// the bytes are a valid value of it.
pub fn to_text(type_oid: u32, v: &[u8]) -> Option<String> {
    if TEXT_LIKE.contains(&type_oid) {
        return std::str::from_utf8(v).ok().map(str::to_string);
    }
    match (type_oid, v.len()) {
        (BOOL, 1) if v[0] <= 1 => Some(if v[0] == 1 { "t" } else { "f" }.to_string()),
        (BYTEA, _) => {
            let mut s = String::with_capacity(2 + 2 * v.len());
            s.push_str("\\x");
            for b in v {
                s.push_str(&format!("{b:02x}"));
            }
            Some(s)
        }
        (OID, 4) => Some(u32::from_be_bytes([v[0], v[1], v[2], v[3]]).to_string()),
        (FLOAT4, 4) => Some(float(f64::from(f32::from_be_bytes([v[0], v[1], v[2], v[3]])))),
        (FLOAT8, 8) => Some(float(f64::from_be_bytes(v.try_into().ok()?))),
        (UUID, 16) => {
            let hex: String = v.iter().map(|b| format!("{b:02x}")).collect();
            Some(format!(
                "{}-{}-{}-{}-{}",
                &hex[..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..]
            ))
        }
        (JSONB, n) if n >= 1 && v[0] == 1 => std::str::from_utf8(&v[1..]).ok().map(str::to_string),
        (DATE, 4) => {
            let days = i32::from_be_bytes([v[0], v[1], v[2], v[3]]);
            Some(match days {
                i32::MAX => "infinity".into(),
                i32::MIN => "-infinity".into(),
                d => date(i64::from(d) + POSTGRES_EPOCH_DAYS),
            })
        }
        (TIMESTAMP | TIMESTAMPTZ, 8) => {
            let micros = i64::from_be_bytes(v.try_into().ok()?);
            Some(match micros {
                i64::MAX => "infinity".into(),
                i64::MIN => "-infinity".into(),
                m => {
                    let days = m.div_euclid(MICROS_PER_DAY);
                    let of_day = m.rem_euclid(MICROS_PER_DAY);
                    let (secs, frac) = (of_day / 1_000_000, of_day % 1_000_000);
                    let day = date(days + POSTGRES_EPOCH_DAYS);
                    // The era goes last, after the time.
                    let (mut s, bc) = match day.strip_suffix(" BC") {
                        Some(d) => (d.to_string(), true),
                        None => (day, false),
                    };
                    s.push_str(&format!(
                        " {:02}:{:02}:{:02}",
                        secs / 3600,
                        secs / 60 % 60,
                        secs % 60
                    ));
                    if frac != 0 {
                        let f = format!("{frac:06}");
                        s.push('.');
                        s.push_str(f.trim_end_matches('0'));
                    }
                    if type_oid == TIMESTAMPTZ {
                        // Sent in UTC; the session's TimeZone would shift the text form only.
                        s.push_str("+00");
                    }
                    if bc {
                        s.push_str(" BC");
                    }
                    s
                }
            })
        }
        _ => decode_number(type_oid, v),
    }
}

/// A float as PostgreSQL prints it: shortest round-trip digits, `NaN`, `Infinity`.
fn float(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        f.to_string()
    }
}

/// `YYYY-MM-DD` (with ` BC` before year 1) of a day counted from 1970-01-01, in the proleptic
/// Gregorian calendar PostgreSQL uses.
fn date(days: i64) -> String {
    let (y, m, d) = crate::recording::chain::civil_from_days(days);
    if y <= 0 {
        format!("{:04}-{m:02}-{d:02} BC", 1 - y)
    } else {
        format!("{y:04}-{m:02}-{d:02}")
    }
}

/// Most base-10000 groups a binary numeric is decoded to (256 digits).
const MAX_NUMERIC_GROUPS: i32 = 64;

/// The decimal text of a binary int2/int4/int8/numeric value.
pub fn decode_number(type_oid: u32, v: &[u8]) -> Option<String> {
    match (type_oid, v.len()) {
        (INT2, 2) => Some(i16::from_be_bytes([v[0], v[1]]).to_string()),
        (INT4, 4) => Some(i32::from_be_bytes([v[0], v[1], v[2], v[3]]).to_string()),
        (INT8, 8) => Some(i64::from_be_bytes(v.try_into().ok()?).to_string()),
        (NUMERIC, n) if n >= 8 => {
            let word = |i: usize| i16::from_be_bytes([v[2 * i], v[2 * i + 1]]);
            let ndigits = usize::try_from(word(0)).ok()?;
            let weight = i32::from(word(1));
            let sign = word(2) as u16;
            if v.len() != 8 + 2 * ndigits || sign == 0xC000 {
                return None;
            }
            // Base-10000 digits, the first at power `weight`. Ten bytes can claim a weight of
            // 32767 (131,072 digits): past what a detector can match or a record should hold,
            // the value is not decoded.
            let highest = weight.max(0);
            let lowest = (weight - ndigits as i32 + 1).min(0);
            if highest - lowest >= MAX_NUMERIC_GROUPS {
                return None;
            }
            let group = |power: i32| {
                usize::try_from(weight - power)
                    .ok()
                    .filter(|j| *j < ndigits)
                    .map_or(0, |j| word(4 + j))
            };
            let mut s = String::new();
            if sign == 0x4000 {
                s.push('-');
            }
            s.push_str(&group(highest).to_string());
            for power in (0..highest).rev() {
                s.push_str(&format!("{:04}", group(power)));
            }
            if lowest < 0 {
                s.push('.');
                for power in (lowest..0).rev() {
                    s.push_str(&format!("{:04}", group(power)));
                }
            }
            Some(s)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_binary_is_decoded_for_detectors() {
        // 4111111111111111 as numeric: digits 4111 1111 1111 1111, weight 3.
        let mut v = Vec::new();
        for w in [4i16, 3, 0, 0, 4111, 1111, 1111, 1111] {
            v.extend_from_slice(&w.to_be_bytes());
        }
        assert_eq!(decode_number(NUMERIC, &v).unwrap(), "4111111111111111");
        let mut v = Vec::new();
        for w in [2i16, 0, 0x4000, 2, 12, 5000] {
            v.extend_from_slice(&(w as u16).to_be_bytes());
        }
        assert_eq!(decode_number(NUMERIC, &v).unwrap(), "-12.5000");
        let numeric = |words: &[i16]| {
            let mut v = Vec::new();
            for w in words {
                v.extend_from_slice(&w.to_be_bytes());
            }
            decode_number(NUMERIC, &v)
        };
        // 0.0005 (weight -1) and 20000 (weight 1, one digit): the point and the zero groups.
        assert_eq!(numeric(&[1, -1, 0, 4, 5]).unwrap(), "0.0005");
        assert_eq!(numeric(&[1, -2, 0, 8, 5]).unwrap(), "0.00000005");
        assert_eq!(numeric(&[1, 1, 0, 0, 2]).unwrap(), "20000");
        // Ten bytes claiming 131,072 digits are not expanded (each would cost 128 KiB of text
        // in the masker and the record).
        assert_eq!(numeric(&[1, i16::MAX, 0, 0, 1]), None);
        assert_eq!(numeric(&[1, i16::MIN, 0, 0, 1]), None);
        assert_eq!(numeric(&[1, 63, 0, 0, 1]).unwrap().len(), 253);
    }

    #[test]
    fn fixed_width_types_read_as_postgres_prints_them() {
        assert_eq!(to_text(INT4, &2i32.to_be_bytes()).unwrap(), "2");
        assert_eq!(to_text(INT8, &(-7i64).to_be_bytes()).unwrap(), "-7");
        assert_eq!(to_text(OID, &u32::MAX.to_be_bytes()).unwrap(), "4294967295");
        assert_eq!(to_text(BOOL, &[1]).unwrap(), "t");
        assert_eq!(to_text(BOOL, &[0]).unwrap(), "f");
        assert_eq!(to_text(BOOL, &[2]), None);
        assert_eq!(to_text(FLOAT8, &1.5f64.to_be_bytes()).unwrap(), "1.5");
        assert_eq!(to_text(FLOAT4, &f32::NAN.to_be_bytes()).unwrap(), "NaN");
        assert_eq!(
            to_text(FLOAT8, &f64::NEG_INFINITY.to_be_bytes()).unwrap(),
            "-Infinity"
        );
        assert_eq!(to_text(BYTEA, b"\x01\xab").unwrap(), "\\x01ab");
        let uuid: Vec<u8> = (0u8..16).collect();
        assert_eq!(
            to_text(UUID, &uuid).unwrap(),
            "00010203-0405-0607-0809-0a0b0c0d0e0f"
        );
        assert_eq!(to_text(25, "héllo".as_bytes()).unwrap(), "héllo");
        assert_eq!(to_text(25, &[0xff]), None, "invalid UTF-8 is not text");
        assert_eq!(to_text(JSONB, b"\x01{\"a\": 1}").unwrap(), "{\"a\": 1}");
        assert_eq!(to_text(JSONB, b"\x02{}"), None, "an unknown jsonb version");
        // Wrong widths and unknown types stay opaque.
        assert_eq!(to_text(INT4, &[0, 1]), None);
        assert_eq!(to_text(UUID, &[0; 15]), None);
        assert_eq!(to_text(600, &[0; 16]), None, "point");
    }

    #[test]
    fn dates_and_timestamps_count_from_2000() {
        assert_eq!(to_text(DATE, &0i32.to_be_bytes()).unwrap(), "2000-01-01");
        assert_eq!(to_text(DATE, &(-1i32).to_be_bytes()).unwrap(), "1999-12-31");
        assert_eq!(to_text(DATE, &9_555i32.to_be_bytes()).unwrap(), "2026-02-28");
        assert_eq!(
            to_text(DATE, &60i32.to_be_bytes()).unwrap(),
            "2000-03-01",
            "2000 is a leap year"
        );
        assert_eq!(to_text(DATE, &i32::MAX.to_be_bytes()).unwrap(), "infinity");
        // 0001-01-01 and the day before it, 0001-12-31 BC.
        let day_one = -730_119i32;
        assert_eq!(to_text(DATE, &day_one.to_be_bytes()).unwrap(), "0001-01-01");
        assert_eq!(
            to_text(DATE, &(day_one - 1).to_be_bytes()).unwrap(),
            "0001-12-31 BC"
        );
        let ts = |micros: i64, oid| to_text(oid, &micros.to_be_bytes()).unwrap();
        assert_eq!(ts(0, TIMESTAMP), "2000-01-01 00:00:00");
        assert_eq!(ts(3_723_500_000, TIMESTAMPTZ), "2000-01-01 01:02:03.5+00");
        assert_eq!(ts(-1, TIMESTAMP), "1999-12-31 23:59:59.999999");
        assert_eq!(
            ts(i64::from(day_one - 1) * MICROS_PER_DAY + 1_000_000, TIMESTAMP),
            "0001-12-31 00:00:01 BC"
        );
        assert_eq!(ts(i64::MIN, TIMESTAMPTZ), "-infinity");
    }

    #[test]
    fn any_bytes_of_any_type_give_text_or_none_without_panic() {
        let types = [
            BOOL,
            BYTEA,
            INT8,
            INT2,
            INT4,
            OID,
            FLOAT4,
            FLOAT8,
            DATE,
            TIMESTAMP,
            TIMESTAMPTZ,
            NUMERIC,
            UUID,
            JSONB,
            25,
            0,
        ];
        let seeds: [&[u8]; 4] = [
            &i64::MIN.to_be_bytes(),
            &(i32::MIN + 1).to_be_bytes(),
            &[0, 2, 0x7f, 0xff, 0, 0, 0x27, 0x0f, 0x27, 0x0f],
            &[1, b'{', b'}'],
        ];
        crate::mutate::each_mutant(&seeds, 2_000, |b| {
            for t in types {
                let _ = to_text(t, b);
            }
        });
    }
}
