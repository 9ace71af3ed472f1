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

pub const MONEY: u32 = 790;

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

/// Most levels of arrays and composite values read into for the detectors.
const MAX_NESTING: usize = 8;
/// Most columns of a composite value (PostgreSQL's own limit on a row's).
const MAX_RECORD_COLUMNS: i32 = 1664;
/// Most dimensions of an array (PostgreSQL's `MAXDIM`).
const MAX_ARRAY_DIMS: i32 = 6;
/// Fewest bytes of a binary array (its 12-byte header) or composite value (its column count).
const MIN_STRUCTURED_BYTES: usize = 4;

/// The text the detectors read of a binary value: numbers (integers, numeric, floats, money)
/// by their digits, anything else by its bytes as text; and, for a value laid out as an array or
/// a composite (row) value, each element's own, so that a card number inside an `int8[]` or a
/// record is seen as digits, not as the eight bytes that hold it.
pub fn detector_text(type_oid: u32, v: &[u8]) -> String {
    let mut out = String::new();
    element_text(type_oid, v, 0, &mut out);
    out
}

/// The digits of a binary number (integers, numeric, floats, money).
fn number_text(type_oid: u32, v: &[u8]) -> Option<String> {
    match (type_oid, v.len()) {
        (FLOAT4, 4) | (FLOAT8, 8) => to_text(type_oid, v),
        (MONEY, 8) => v.try_into().ok().map(|b| i64::from_be_bytes(b).to_string()),
        _ => decode_number(type_oid, v),
    }
}

/// Big-endian reads over a value's bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn i32(&mut self) -> Option<i32> {
        self.take(4).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// One length-prefixed element: `Some(None)` for a NULL.
    fn element(&mut self) -> Option<Option<&'a [u8]>> {
        match self.i32()? {
            -1 => Some(None),
            n => self.take(usize::try_from(n).ok()?).map(Some),
        }
    }
}

/// Appends the texts of `v`'s elements, read as a binary array or composite value (as
/// `array_send` and `record_send` write them, every byte accounted for), one per line; false,
/// appending nothing, when it is laid out as neither. The layout is checked whole before any
/// element is read into, so each level reads its bytes once: at most [`MAX_NESTING`] times the
/// value in all. The texts go straight into `out`: an array of millions of empty elements costs
/// a line break each, not a string and a slot each (a 60 MB row of them once took 1 GiB).
fn elements(v: &[u8], depth: usize, out: &mut String) -> bool {
    if depth >= MAX_NESTING || v.len() < MIN_STRUCTURED_BYTES {
        return false;
    }
    let Some(layout) = Layout::array(v).or_else(|| Layout::record(v)) else {
        return false;
    };
    let mut first = true;
    layout.each(|oid, bytes| {
        if !first {
            out.push('\n');
        }
        first = false;
        element_text(oid, bytes, depth + 1, out);
    });
    true
}

/// A binary array or composite value whose layout was checked whole: where its elements start,
/// and how they are laid out.
struct Layout<'a> {
    /// The bytes from the first element on.
    items: &'a [u8],
    /// Elements (an array's) or columns (a composite value's).
    count: usize,
    /// An array's element type; `None` for a composite value, whose columns each carry theirs.
    elem: Option<u32>,
}

impl<'a> Layout<'a> {
    fn array(v: &'a [u8]) -> Option<Self> {
        let mut r = Reader(v);
        let ndim = r.i32()?;
        let flags = r.i32()?;
        let elem = r.u32()?;
        if !(0..=MAX_ARRAY_DIMS).contains(&ndim) || !(0..=1).contains(&flags) {
            return None;
        }
        let mut count: usize = if ndim == 0 { 0 } else { 1 };
        for _ in 0..ndim {
            let n = usize::try_from(r.i32()?).ok()?;
            let _lower_bound = r.i32()?;
            count = count.checked_mul(n)?;
        }
        // Each element takes four bytes at least: more than the rest holds is not an array.
        if count > r.0.len() / 4 {
            return None;
        }
        Self {
            items: r.0,
            count,
            elem: Some(elem),
        }
        .checked()
    }

    fn record(v: &'a [u8]) -> Option<Self> {
        let mut r = Reader(v);
        let columns = r.i32()?;
        if !(0..=MAX_RECORD_COLUMNS).contains(&columns) {
            return None;
        }
        Self {
            items: r.0,
            count: usize::try_from(columns).ok()?,
            elem: None,
        }
        .checked()
    }

    /// Itself if its elements account for every byte.
    fn checked(self) -> Option<Self> {
        let mut r = Reader(self.items);
        for _ in 0..self.count {
            if self.elem.is_none() {
                r.u32()?;
            }
            r.element()?;
        }
        r.0.is_empty().then_some(self)
    }

    /// Calls `f` with each non-NULL element and its type.
    fn each(&self, mut f: impl FnMut(u32, &'a [u8])) {
        let mut r = Reader(self.items);
        for _ in 0..self.count {
            let oid = self.elem.or_else(|| r.u32());
            match (oid, r.element()) {
                (Some(oid), Some(Some(bytes))) => f(oid, bytes),
                (Some(_), Some(None)) => {}
                // Checked whole: not reached.
                _ => return,
            }
        }
    }
}

/// Appends a value's text for the detectors: a number's digits; an array's or composite value's
/// elements' texts (every byte is accounted for by the elements, so they are all there is to
/// read); otherwise its bytes as text.
fn element_text(type_oid: u32, v: &[u8], depth: usize, out: &mut String) {
    if let Some(digits) = number_text(type_oid, v) {
        out.push_str(&digits);
    } else if !elements(v, depth, out) {
        out.push_str(&String::from_utf8_lossy(v));
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
    /// A million empty elements (four bytes each) read as a line break each; a NULL among them
    /// as nothing; bytes the elements do not account for make it no array.
    #[test]
    fn large_arrays_are_read_element_by_element() {
        let n = 1_000_000usize;
        let mut array = Vec::with_capacity(20 + 4 * n);
        for word in [1i32, 0, 25, i32::try_from(n).unwrap(), 1] {
            array.extend(word.to_be_bytes());
        }
        array.extend((-1i32).to_be_bytes());
        for _ in 1..n {
            array.extend(0i32.to_be_bytes());
        }
        let text = detector_text(1009, &array);
        assert_eq!((text.len(), text.bytes().all(|b| b == b'\n')), (n - 2, true));
        array.push(0);
        assert!(
            detector_text(1009, &array).len() >= array.len(),
            "read as its bytes"
        );
    }

    /// An `int8[]`, a `float8` and a record holding a numeric, as the server sends them in
    /// binary: the detectors read their digits.
    #[test]
    fn detectors_read_the_digits_inside_arrays_records_and_floats() {
        let card: i64 = 4_111_111_111_111_111;
        let mut array = Vec::new();
        for word in [1i32, 0] {
            array.extend(word.to_be_bytes());
        }
        array.extend(INT8.to_be_bytes());
        array.extend(2i32.to_be_bytes()); // two elements
        array.extend(1i32.to_be_bytes()); // lower bound
        array.extend(8i32.to_be_bytes());
        array.extend(card.to_be_bytes());
        array.extend(8i32.to_be_bytes());
        array.extend(7i64.to_be_bytes());
        assert_eq!(detector_text(1016, &array), "4111111111111111\n7");
        let float = detector_text(FLOAT8, &(card as f64).to_be_bytes());
        assert_eq!(float, "4111111111111111");
        // record(text, int8[]): the array inside the record is read too.
        let mut record = 2i32.to_be_bytes().to_vec();
        record.extend(25u32.to_be_bytes());
        record.extend(3i32.to_be_bytes());
        record.extend(b"ada");
        record.extend(1016u32.to_be_bytes());
        record.extend(i32::try_from(array.len()).unwrap().to_be_bytes());
        record.extend(&array);
        assert_eq!(detector_text(2249, &record), "ada\n4111111111111111\n7");
        // Bytes laid out as neither stay as they are; a length past the end is not an array.
        assert_eq!(detector_text(17, b"plain"), "plain");
        let mut cut = array.clone();
        cut.truncate(array.len() - 3);
        assert_eq!(detector_text(1016, &cut), String::from_utf8_lossy(&cut));
    }
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
