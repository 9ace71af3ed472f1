//! Result masking: each RowDescription compiles into a per-column plan (a column rule resolved
//! through the field's table and attribute, detectors on values), then every DataRow is rewritten
//! one at a time, so results of any size stream through with bounded memory. Text and binary
//! formats are both handled: binary numbers are decoded for the detectors, and a masked value
//! that cannot be written in its binary type becomes NULL rather than leaking.

use agentgate_crds::policy::MaskingStrategy;
use bytes::{BufMut, BytesMut};
use serde_json::Value;

use super::binary::{BYTEA, JSONB, TEXT_LIKE, detector_text, to_text};
use super::message::data_row::DataRow;
use super::message::row_description::{Field, RowDescription};
use super::message::{FrameError, backend, frame};
use crate::masking::{MaskReport, MaskingPlan};

/// What happens to one column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Column {
    whole: Option<MaskingStrategy>,
    binary: bool,
    type_oid: u32,
}

impl Column {
    /// A `json` value (its binary form is its text too) or a text-format `jsonb` value: JSON
    /// text that field rules apply to.
    fn json_text(self) -> bool {
        self.type_oid == JSON || (self.type_oid == JSONB && !self.binary)
    }
}

/// `json`'s type OID.
const JSON: u32 = 114;

/// The masking of one result set.
#[derive(Debug)]
pub struct RowMasker {
    plan: MaskingPlan,
    columns: Vec<Column>,
    detect: bool,
    /// JSON field rules apply (to `json` and `jsonb` values).
    fields: bool,
    /// No column rule, no detector, and no field rule a column could hold: rows pass as they are.
    noop: bool,
    names: Vec<String>,
    /// The agent's token: a recorded value cut through it keeps none of it (see [`Self::hiding`]).
    hidden: Option<std::sync::Arc<str>>,
}

impl RowMasker {
    /// `whole` says, for each field, whether a column rule masks it entirely.
    pub fn new(
        plan: &MaskingPlan,
        detect: bool,
        rows: &RowDescription,
        whole: impl Fn(&Field) -> Option<MaskingStrategy>,
    ) -> Self {
        let columns: Vec<Column> = rows
            .fields
            .iter()
            .map(|f| Column {
                whole: whole(f),
                binary: f.format == 1,
                type_oid: f.type_oid,
            })
            .collect();
        let fields = plan.has_field_rules();
        Self {
            plan: plan.clone(),
            noop: !detect
                && columns
                    .iter()
                    .all(|c| c.whole.is_none() && !(fields && (c.json_text() || c.type_oid == JSONB))),
            columns,
            detect,
            fields,
            names: rows.fields.iter().map(|f| f.name.clone()).collect(),
            hidden: None,
        }
    }

    /// Hides `token` where a recorded value is cut through it: the recording replaces the
    /// whole token wherever it appears, not the start a cut leaves.
    pub fn hiding(mut self, token: std::sync::Arc<str>) -> Self {
        self.hidden = Some(token);
        self
    }

    /// Nothing to mask in this result.
    pub fn is_noop(&self) -> bool {
        self.noop
    }

    /// Column names, for recordings.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Rewrites one DataRow body into a whole frame in `out`. Returns the masked values as
    /// recorded text (when `record` is set).
    pub fn mask(
        &self,
        body: &[u8],
        out: &mut BytesMut,
        report: &mut MaskReport,
        record: bool,
    ) -> Result<Option<Vec<Value>>, FrameError> {
        if self.noop && !record {
            // Nothing to mask or record: checked, then copied as it came.
            super::message::data_row::validate(body)?;
            frame(out, backend::DATA_ROW, |b| b.put_slice(body));
            return Ok(None);
        }
        let row = DataRow::parse(body)?;
        if row.values.len() != self.columns.len() && !self.noop {
            // A row that does not match its description cannot be masked: fail closed.
            return Err(FrameError::malformed(
                "DataRow",
                "column count differs from RowDescription",
            ));
        }
        let mut recorded = record.then(|| Vec::with_capacity(row.values.len()));
        if self.noop {
            frame(out, backend::DATA_ROW, |b| b.put_slice(body));
            if let Some(r) = recorded.as_mut() {
                for (i, v) in row.values.iter().enumerate() {
                    r.push(self.record_value(i, *v));
                }
            }
            return Ok(recorded);
        }
        let mut masked: Vec<Option<std::borrow::Cow<'_, [u8]>>> = Vec::with_capacity(row.values.len());
        for (i, v) in row.values.iter().enumerate() {
            let col = self.columns[i];
            let m = match v {
                None => None,
                Some(v) => self.mask_value(col, v, report),
            };
            masked.push(m);
        }
        if let Some(r) = recorded.as_mut() {
            for (i, v) in masked.iter().enumerate() {
                r.push(self.record_value(i, v.as_deref()));
            }
        }
        super::message::data_row::encode(out, &masked);
        Ok(recorded)
    }

    fn mask_value<'v>(
        &self,
        col: Column,
        v: &'v [u8],
        report: &mut MaskReport,
    ) -> Option<std::borrow::Cow<'v, [u8]>> {
        use std::borrow::Cow;
        // Detectors read JSON through its escapes (`\u0040` is an `@`), which they would not on
        // its text: json values go through the JSON masker for them too.
        if col.whole.is_none() && (self.fields || self.detect) && col.json_text() {
            let mut out = Vec::new();
            return match self.plan.mask_json(v, &mut out) {
                Ok(r) if r.is_empty() => Some(Cow::Borrowed(v)),
                Ok(r) => {
                    report.add(&r);
                    Some(Cow::Owned(out))
                }
                // A json value the masker cannot parse is withheld, as a binary jsonb one is.
                Err(_) => {
                    report.fields += 1;
                    None
                }
            };
        }
        // Text-format bytea is hex (`\x6164…`), which hides its bytes from the detectors: they
        // read the bytes, and a find withholds the value, as in binary format.
        if !col.binary
            && col.type_oid == BYTEA
            && col.whole.is_none()
            && self.detect
            && let Some(bytes) = bytea_hex(v)
        {
            let (_, r) = self
                .plan
                .mask_escaped_text(&String::from_utf8_lossy(&bytes), false);
            if !r.is_empty() {
                report.add(&r);
                return None;
            }
            return Some(Cow::Borrowed(v));
        }
        if !col.binary || TEXT_LIKE.contains(&col.type_oid) {
            let text = String::from_utf8_lossy(v);
            if let Some(strategy) = col.whole {
                report.fields += 1;
                return Some(Cow::Owned(self.plan.mask_value(strategy, &text).into_bytes()));
            }
            if !self.detect {
                return Some(Cow::Borrowed(v));
            }
            let (out, r) = self.plan.mask_escaped_text(&text, false);
            report.add(&r);
            return Some(if r.is_empty() {
                Cow::Borrowed(v)
            } else {
                Cow::Owned(out.into_owned().into_bytes())
            });
        }
        if col.type_oid == JSONB && v.first() == Some(&1) {
            let text = String::from_utf8_lossy(&v[1..]);
            let masked = if let Some(strategy) = col.whole {
                serde_json::to_string(&self.plan.mask_value(strategy, &text)).unwrap_or_default()
            } else {
                let mut out = Vec::new();
                // A jsonb value the masker cannot parse is withheld.
                match self.plan.mask_json(text.as_bytes(), &mut out) {
                    Ok(r) if r.is_empty() => return Some(Cow::Borrowed(v)),
                    Ok(r) => {
                        report.add(&r);
                        String::from_utf8_lossy(&out).into_owned()
                    }
                    Err(_) => return None,
                }
            };
            let mut b = Vec::with_capacity(masked.len() + 1);
            b.push(1);
            b.extend_from_slice(masked.as_bytes());
            return Some(Cow::Owned(b));
        }
        if col.whole.is_some() {
            report.fields += 1;
            // No masked form fits a binary number, date or UUID: withhold the value.
            return None;
        }
        if self.detect {
            // Numbers are looked at as their digits, arrays and composite values element by
            // element, anything else as the text its bytes hold. A find withholds the value: no
            // masked form fits it.
            let text = detector_text(col.type_oid, v);
            let (_, r) = self.plan.mask_escaped_text(&text, false);
            if !r.is_empty() {
                report.add(&r);
                return None;
            }
        }
        Some(Cow::Borrowed(v))
    }

    fn record_value(&self, i: usize, v: Option<&[u8]>) -> Value {
        let Some(v) = v else { return Value::Null };
        let col = self.columns.get(i).copied();
        if v.len() > MAX_RECORDED_VALUE {
            // A value may be as large as a frame (64 MiB), and a record holds up to 100 rows of
            // them: what it keeps of one is a prefix (text, or nothing of binary) and the size.
            let binary = col.is_some_and(|c| c.binary && !TEXT_LIKE.contains(&c.type_oid));
            let kept = if binary {
                String::new()
            } else {
                let head = &v[..MAX_RECORDED_VALUE];
                let mut valid = std::str::from_utf8(head).map_or_else(|e| e.valid_up_to(), str::len);
                if let Some(token) = &self.hidden {
                    valid -= crate::recording::partial_secret_at_end(&head[..valid], token.as_bytes());
                }
                String::from_utf8_lossy(&head[..valid]).into_owned()
            };
            return Value::String(format!("{kept}<{} bytes in all>", v.len()));
        }
        match col {
            Some(c) if c.binary && !TEXT_LIKE.contains(&c.type_oid) => match to_text(c.type_oid, v) {
                Some(text) => Value::String(text),
                None => Value::String(format!("<binary, {} bytes>", v.len())),
            },
            _ => Value::String(String::from_utf8_lossy(v).into_owned()),
        }
    }
}

/// The bytes of a bytea in PostgreSQL's hex output format (`\x` and two hex digits a byte).
pub(crate) fn bytea_hex(v: &[u8]) -> Option<Vec<u8>> {
    let hex = v.strip_prefix(b"\\x")?;
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let digit = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    hex.chunks_exact(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// Most bytes of one value a recording keeps (the rest is counted).
pub const MAX_RECORDED_VALUE: usize = 4 * 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::masking::HashKey;
    use crate::protocol::postgres::binary::{INT2, INT4, INT8, NUMERIC};
    use agentgate_crds::policy::{Detector, MaskingRule};

    fn plan() -> MaskingPlan {
        let rule = MaskingRule {
            columns: vec!["public.customers.email".into()],
            json_fields: vec![],
            detectors: vec![Detector::Email, Detector::CreditCard],
            strategy: MaskingStrategy::Redact,
            on_unparseable: Default::default(),
        };
        MaskingPlan::compile(&[&rule], HashKey::from_bytes([7; 32])).unwrap()
    }

    /// Text-format bytea is hex: the detectors read its bytes, and a find withholds the value.
    #[test]
    fn detectors_read_text_bytea_through_its_hex() {
        let rows = RowDescription {
            fields: vec![field("blob", 0, BYTEA, 0)],
        };
        let m = RowMasker::new(&plan(), true, &rows, |_| None);
        let hex = |s: &[u8]| {
            let mut v = b"\\x".to_vec();
            v.extend(s.iter().flat_map(|b| format!("{b:02x}").into_bytes()));
            v
        };
        let card = hex(b"card 4111 1111 1111 1111 on file");
        assert_eq!(run(&m, &[Some(&card)]), [None]);
        let plain = hex(b"nothing to see");
        assert_eq!(run(&m, &[Some(&plain)]), [Some(plain.clone())]);
        // Not hex output (the escape format shows printable bytes as they are): read as text.
        let escaped = b"card 4111 1111 1111 1111".to_vec();
        assert_ne!(run(&m, &[Some(&escaped)]), [Some(escaped.clone())]);
        assert_eq!(bytea_hex(b"\\x4g"), None);
        assert_eq!(bytea_hex(b"\\x414"), None);
        assert_eq!(bytea_hex(b"\\x4142"), Some(b"AB".to_vec()));
    }

    /// Detectors alone still read json values as JSON: an escaped `@` hides no email.
    #[test]
    fn detectors_read_json_values_through_their_escapes() {
        let rows = RowDescription {
            fields: vec![field("doc", 0, JSON, 0), field("bdoc", 0, 3802, 0)],
        };
        let m = RowMasker::new(&plan(), true, &rows, |_| None);
        let doc = br#"{"e": "john\u0040example.com"}"#;
        let got = run(&m, &[Some(doc), Some(doc)]);
        for v in got {
            let v = String::from_utf8(v.unwrap()).unwrap();
            assert!(
                v.contains("[REDACTED:EMAIL]") && !v.contains("example.com"),
                "{v}"
            );
        }
    }

    /// A text column holding escaped text (JSON kept as `text`, a URL) is read through its
    /// escapes: `Paid:\n4111...` scanned as written glues the card to the `n` before it.
    #[test]
    fn detectors_read_text_values_through_their_escapes() {
        let rows = RowDescription {
            fields: vec![field("note", 0, 25, 0)],
        };
        let m = RowMasker::new(&plan(), true, &rows, |_| None);
        for value in [
            &br#"{"note":"Paid:\n4111111111111111"}"#[..],
            b"card%3A4111111111111111",
            b"mail\\tjohn@example.com",
        ] {
            let got = run(&m, &[Some(value)]).remove(0).unwrap();
            let got = String::from_utf8(got).unwrap();
            assert!(got.contains("[REDACTED:"), "{got}");
            assert!(
                !got.contains("4111111111111111") && !got.contains("example.com"),
                "{got}"
            );
        }
    }

    /// JSON field rules reach `json` and `jsonb` values in text format (what psql asks for) as
    /// well as binary `jsonb`; a value that is not JSON is withheld.
    #[test]
    fn json_field_rules_reach_json_and_jsonb_in_either_format() {
        let rule = MaskingRule {
            columns: vec![],
            json_fields: vec!["$..ssn".into()],
            detectors: vec![],
            strategy: MaskingStrategy::Redact,
            on_unparseable: Default::default(),
        };
        let plan = MaskingPlan::compile(&[&rule], HashKey::from_bytes([7; 32])).unwrap();
        let rows = RowDescription {
            fields: vec![
                field("doc", 0, 3802, 0),
                field("raw", 0, JSON, 0),
                field("bin", 0, 3802, 1),
                field("json_bin", 0, JSON, 1),
                field("note", 0, 25, 0),
            ],
        };
        let m = RowMasker::new(&plan, false, &rows, |_| None);
        assert!(!m.is_noop());
        let doc = br#"{"name": "Ada", "ssn": "078-05-1120"}"#;
        let mut bin = vec![1u8];
        bin.extend_from_slice(doc);
        let note = br#"{"ssn": "078-05-1120"} as plain text"#;
        let got = run(&m, &[Some(doc), Some(doc), Some(&bin), Some(doc), Some(note)]);
        for (i, v) in got[..4].iter().enumerate() {
            let v = String::from_utf8(v.clone().unwrap()).unwrap();
            assert!(!v.contains("078-05-1120") && v.contains("Ada"), "column {i}: {v}");
        }
        assert_eq!(
            got[4].as_deref(),
            Some(&note[..]),
            "field rules are for JSON values"
        );
        let got = run(
            &m,
            &[Some(b"{not json"), Some(b"[1,"), Some(doc), Some(doc), None],
        );
        assert_eq!(
            (got[0].clone(), got[1].clone()),
            (None, None),
            "unparseable JSON is withheld"
        );
        // Without a json column there is nothing for the rules to do.
        let text_only = RowDescription {
            fields: vec![field("note", 0, 25, 0)],
        };
        assert!(RowMasker::new(&plan, false, &text_only, |_| None).is_noop());
    }

    fn field(name: &str, table: u32, type_oid: u32, format: i16) -> Field {
        Field {
            name: name.into(),
            table_oid: table,
            column: 1,
            type_oid,
            type_size: -1,
            type_modifier: -1,
            format,
        }
    }

    fn run(m: &RowMasker, values: &[Option<&[u8]>]) -> Vec<Option<Vec<u8>>> {
        let mut body = BytesMut::new();
        super::super::message::data_row::encode(&mut body, values);
        let mut out = BytesMut::new();
        let mut report = MaskReport::default();
        m.mask(&body[5..], &mut out, &mut report, false).unwrap();
        DataRow::parse(&out[5..])
            .unwrap()
            .values
            .into_iter()
            .map(|v| v.map(<[u8]>::to_vec))
            .collect()
    }

    #[test]
    fn columns_and_detectors_in_text_and_binary() {
        let rows = RowDescription {
            fields: vec![
                field("email", 100, 25, 0),
                field("note", 0, 25, 1),
                field("card", 0, INT8, 1),
                field("email_bin", 100, 1043, 1),
                field("id", 0, INT4, 1),
            ],
        };
        let m = RowMasker::new(&plan(), true, &rows, |f| {
            (f.table_oid == 100).then_some(MaskingStrategy::Redact)
        });
        let card = 4111111111111111i64.to_be_bytes();
        let id = 42i32.to_be_bytes();
        let got = run(
            &m,
            &[
                Some(b"a@example.com"),
                Some(b"mail bob@example.org now"),
                Some(&card),
                Some(b"c@example.com"),
                Some(&id),
            ],
        );
        assert_ne!(got[0].as_deref(), Some(&b"a@example.com"[..]));
        let note = String::from_utf8(got[1].clone().unwrap()).unwrap();
        assert!(
            !note.contains("bob@example.org") && note.starts_with("mail "),
            "{note}"
        );
        assert_eq!(got[2], None, "a binary card number is withheld");
        assert!(!String::from_utf8_lossy(got[3].as_deref().unwrap()).contains("c@example.com"));
        assert_eq!(got[4].as_deref(), Some(&id[..]), "other numbers pass untouched");
    }

    /// A record keeps a prefix of a large value and its size: a result of 100 rows of 64 MiB
    /// values once held them all in memory for the record.
    #[test]
    fn recorded_values_are_capped() {
        let rows = RowDescription {
            fields: vec![field("note", 0, 25, 0), field("blob", 0, 17, 1)],
        };
        let m = RowMasker::new(&plan(), false, &rows, |_| None);
        let text = "é".repeat(60_000);
        let blob = vec![7u8; 200_000];
        let mut body = BytesMut::new();
        super::super::message::data_row::encode(&mut body, &[Some(text.as_bytes()), Some(&blob)]);
        let mut out = BytesMut::new();
        let recorded = m
            .mask(&body[5..], &mut out, &mut MaskReport::default(), true)
            .unwrap()
            .unwrap();
        let note = recorded[0].as_str().unwrap();
        assert!(
            note.starts_with("éé") && note.ends_with("<120000 bytes in all>"),
            "{}",
            &note[note.len() - 40..]
        );
        assert!(note.len() <= MAX_RECORDED_VALUE + 32, "{}", note.len());
        assert_eq!(recorded[1], Value::String("<200000 bytes in all>".into()));
        // The client still gets every byte.
        assert_eq!(
            DataRow::parse(&out[5..]).unwrap().values[0],
            Some(text.as_bytes())
        );
    }

    #[test]
    fn noop_rows_are_copied() {
        let rows = RowDescription {
            fields: vec![field("n", 0, 25, 0)],
        };
        let m = RowMasker::new(&plan(), false, &rows, |_| None);
        assert!(m.is_noop());
        assert_eq!(
            run(&m, &[Some(b"x@example.com")])[0].as_deref(),
            Some(&b"x@example.com"[..])
        );
    }

    #[test]
    fn hostile_data_rows_are_refused_or_masked_without_panic() {
        let rows = RowDescription {
            fields: vec![
                field("email", 100, 25, 0),
                field("note", 0, 25, 1),
                field("amount", 0, NUMERIC, 1),
                field("card", 0, INT8, 1),
                field("id", 0, INT4, 1),
                field("small", 0, INT2, 1),
                field("doc", 0, JSONB, 1),
            ],
        };
        let m = RowMasker::new(&plan(), true, &rows, |f| {
            (f.table_oid == 100).then_some(MaskingStrategy::Redact)
        });
        let mut numeric = Vec::new();
        for w in [4i16, 3, 0, 0, 4111, 1111, 1111, 1111] {
            numeric.extend_from_slice(&w.to_be_bytes());
        }
        let card = 4111111111111111i64.to_be_bytes();
        let id = 42i32.to_be_bytes();
        let small = 7i16.to_be_bytes();
        let values: [Option<&[u8]>; 7] = [
            Some(b"a@example.com"),
            Some(b"card 4111 1111 1111 1111"),
            Some(&numeric),
            Some(&card),
            Some(&id),
            Some(&small),
            Some(b"\x01{\"mail\": \"x@example.org\"}"),
        ];
        let mut seed = BytesMut::new();
        super::super::message::data_row::encode(&mut seed, &values);
        crate::mutate::each_mutant(&[&seed[5..]], 5_000, |b| {
            let mut out = BytesMut::new();
            let mut report = MaskReport::default();
            if m.mask(b, &mut out, &mut report, true).is_ok() {
                let row = DataRow::parse(&out[5..]).expect("a masked row is a well-formed DataRow");
                assert_eq!(row.values.len(), 7);
                // Nothing a detector finds is left: masking the output again changes nothing.
                let mut again = BytesMut::new();
                m.mask(&out[5..], &mut again, &mut MaskReport::default(), false)
                    .expect("a masked row masks again");
                assert_eq!(again, out);
            }
        });
    }

    #[test]
    fn other_binary_values_are_scanned_and_recorded_as_text() {
        // A binary text[] carries each element's bytes as they are: an email in it is found.
        let mut array = Vec::new();
        for w in [1i32, 0, 25, 1, 1] {
            array.extend_from_slice(&w.to_be_bytes());
        }
        let element = b"d@example.com";
        array.extend_from_slice(&(element.len() as i32).to_be_bytes());
        array.extend_from_slice(element);
        let uuid: Vec<u8> = (0u8..16).collect();
        let rows = RowDescription {
            fields: vec![
                field("emails", 0, 1009, 1),
                field("id", 0, 2950, 1),
                field("ok", 0, 16, 1),
            ],
        };
        let m = RowMasker::new(&plan(), true, &rows, |_| None);
        let got = run(&m, &[Some(&array), Some(&uuid), Some(&[1])]);
        assert_eq!(got[0], None, "a binary array holding an email is withheld");
        assert_eq!(got[1].as_deref(), Some(&uuid[..]));
        let mut body = BytesMut::new();
        super::super::message::data_row::encode(
            &mut body,
            &[Some(&array[..]), Some(&uuid[..]), Some(&[1u8][..])],
        );
        let mut out = BytesMut::new();
        let mut report = MaskReport::default();
        let recorded = m.mask(&body[5..], &mut out, &mut report, true).unwrap().unwrap();
        assert_eq!(report.detections, 1);
        assert_eq!(
            recorded,
            vec![
                Value::Null,
                Value::String("00010203-0405-0607-0809-0a0b0c0d0e0f".into()),
                Value::String("t".into()),
            ]
        );
    }
}
