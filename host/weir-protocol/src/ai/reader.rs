//! Reading typed fields from a JSON object or a multipart form, collecting every problem and
//! recording each field's rules.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::capability::Capability;
use crate::error::ValidationErrors;

use super::{FilePart, FormInput, MAX_TEXT_CHARS};

pub(super) enum Source<'a> {
    Json(&'a Map<String, Value>),
    Form(&'a FormInput),
    /// No input: every field reads as absent and is recorded in the schema.
    Schema,
}

/// One field of a request as the validation code reads it; the OpenAPI document is built
/// from these, so the documented and the enforced rules are the same.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldSpec {
    /// Field name.
    pub name: String,
    /// JSON-Schema type: `string`, `integer`, `number`, `boolean`, `file`, `messages`.
    pub kind: &'static str,
    /// Whether it must be sent.
    pub required: bool,
    /// Default when absent.
    pub default: Option<Value>,
    /// Inclusive minimum.
    pub minimum: Option<f64>,
    /// Inclusive maximum.
    pub maximum: Option<f64>,
    /// Value must be a multiple of this.
    pub multiple_of: Option<u32>,
    /// Longest text, in characters.
    pub max_length: Option<usize>,
    /// Accepted MIME types of a file.
    pub media_types: Vec<String>,
}

impl FieldSpec {
    pub(super) fn new(name: &str, kind: &'static str) -> FieldSpec {
        FieldSpec {
            name: name.to_owned(),
            kind,
            required: false,
            default: None,
            minimum: None,
            maximum: None,
            multiple_of: None,
            max_length: None,
            media_types: Vec::new(),
        }
    }
}

pub(super) enum Raw<'a> {
    Json(&'a Value),
    Form(&'a str),
}

/// Reads typed fields and collects every problem.
pub(super) struct Reader<'a> {
    pub(super) source: Source<'a>,
    pub(super) errors: ValidationErrors,
    pub(super) schema: Vec<FieldSpec>,
}

impl<'a> Reader<'a> {
    pub(super) fn raw(&self, name: &str) -> Option<Raw<'a>> {
        match self.source {
            Source::Json(map) => map.get(name).filter(|v| !v.is_null()).map(Raw::Json),
            Source::Form(form) => form
                .fields
                .get(name)
                .map(String::as_str)
                .filter(|s| !s.is_empty())
                .map(Raw::Form),
            Source::Schema => None,
        }
    }

    /// A field the capability reads that came more than once in a form is refused.
    pub(super) fn check_repeated(&mut self, name: &str) {
        if let Source::Form(form) = self.source {
            if form.repeated.contains(name) {
                self.errors.push(
                    name,
                    "duplicate",
                    "sent more than once: send each field once",
                );
            }
        }
    }

    pub(super) fn record(&mut self, spec: FieldSpec) {
        self.check_repeated(&spec.name);
        if matches!(self.source, Source::Schema) && !self.schema.iter().any(|f| f.name == spec.name)
        {
            self.schema.push(spec);
        }
    }

    pub(super) fn text(&mut self, name: &str, required: bool, default: &str) -> String {
        self.record(FieldSpec {
            required,
            default: (!required).then(|| Value::String(default.to_owned())),
            max_length: Some(MAX_TEXT_CHARS),
            ..FieldSpec::new(name, "string")
        });
        match self.raw(name) {
            None if required => {
                self.errors.push(name, "missing", "field required");
                String::new()
            }
            None => default.to_owned(),
            Some(Raw::Json(Value::String(s))) => self.check_len(name, s, required),
            Some(Raw::Form(s)) => self.check_len(name, s, required),
            Some(Raw::Json(_)) => {
                self.errors.push(name, "string_type", "must be a string");
                String::new()
            }
        }
    }

    pub(super) fn check_len(&mut self, name: &str, s: &str, required: bool) -> String {
        let chars = s.chars().count();
        if chars > MAX_TEXT_CHARS {
            self.errors.push(
                name,
                "string_too_long",
                format!("must be at most {MAX_TEXT_CHARS} characters (got {chars})"),
            );
        } else if required && s.trim().is_empty() {
            self.errors
                .push(name, "string_too_short", "must not be empty");
        }
        s.to_owned()
    }

    pub(super) fn int(
        &mut self,
        name: &str,
        default: Option<i64>,
        min: i64,
        max: i64,
    ) -> Option<i64> {
        self.record(FieldSpec {
            default: default.map(Value::from),
            minimum: Some(min as f64),
            maximum: Some(max as f64),
            ..FieldSpec::new(name, "integer")
        });
        let value = match self.raw(name) {
            None => return default,
            Some(Raw::Json(Value::Number(n))) => n.as_i64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9e15)
                    .map(|f| f as i64)
            }),
            Some(Raw::Json(_)) => None,
            Some(Raw::Form(s)) => s.trim().parse::<i64>().ok(),
        };
        match value {
            None => {
                self.errors.push(name, "int_parsing", "must be an integer");
                default
            }
            Some(v) if v < min => {
                self.errors.push(
                    name,
                    "greater_than_equal",
                    format!("must be at least {min} (got {v})"),
                );
                default
            }
            Some(v) if v > max => {
                self.errors.push(
                    name,
                    "less_than_equal",
                    format!("must be at most {max} (got {v})"),
                );
                default
            }
            Some(v) => Some(v),
        }
    }

    /// An integer that must be present or defaulted; ranges fit in u32.
    pub(super) fn uint(&mut self, name: &str, default: u32, min: u32, max: u32) -> u32 {
        self.int(
            name,
            Some(i64::from(default)),
            i64::from(min),
            i64::from(max),
        )
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(default)
    }

    pub(super) fn number(&mut self, name: &str, default: f64, min: f64, max: f64) -> f64 {
        self.record(FieldSpec {
            default: Some(Value::from(default)),
            minimum: Some(min),
            maximum: Some(max),
            ..FieldSpec::new(name, "number")
        });
        let value = match self.raw(name) {
            None => return default,
            Some(Raw::Json(Value::Number(n))) => n.as_f64(),
            Some(Raw::Json(_)) => None,
            Some(Raw::Form(s)) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
        };
        match value {
            None => {
                self.errors.push(name, "float_parsing", "must be a number");
                default
            }
            Some(v) if v < min || v > max => {
                self.errors.push(
                    name,
                    "range",
                    format!("must be within {min}..={max} (got {v})"),
                );
                default
            }
            Some(v) => v,
        }
    }

    pub(super) fn flag(&mut self, name: &str, default: bool) -> bool {
        self.record(FieldSpec {
            default: Some(Value::Bool(default)),
            ..FieldSpec::new(name, "boolean")
        });
        match self.raw(name) {
            None => default,
            Some(Raw::Json(Value::Bool(b))) => *b,
            Some(Raw::Form(s)) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => true,
                "false" | "0" | "no" | "off" => false,
                _ => {
                    self.errors
                        .push(name, "bool_parsing", "must be true or false");
                    default
                }
            },
            Some(Raw::Json(_)) => {
                self.errors.push(name, "bool_type", "must be true or false");
                default
            }
        }
    }

    pub(super) fn seed(&mut self) -> Option<u64> {
        self.int("seed", None, 0, i64::MAX)
            .and_then(|v| u64::try_from(v).ok())
    }

    /// A dimension: a multiple of 8 within 64..=max.
    pub(super) fn dimension(&mut self, name: &str, default: u32, max: u32) -> u32 {
        let v = self.uint(name, default, 64, max);
        if let Some(spec) = self.schema.iter_mut().find(|f| f.name == name) {
            spec.multiple_of = Some(8);
        }
        if !v.is_multiple_of(8) {
            self.errors.push(
                name,
                "multiple_of",
                format!("must be a multiple of 8 (got {v})"),
            );
            return default;
        }
        v
    }

    pub(super) fn file(&mut self, name: &str, types: &[&str]) -> Option<FilePart> {
        if matches!(self.source, Source::Schema) {
            self.record(FieldSpec {
                required: true,
                media_types: types.iter().map(|t| (*t).to_owned()).collect(),
                ..FieldSpec::new(name, "file")
            });
            return None;
        }
        let Source::Form(form) = self.source else {
            self.errors.push(
                name,
                "missing",
                "a file upload needs a multipart/form-data body",
            );
            return None;
        };
        self.check_repeated(name);
        let Some(part) = form.files.get(name) else {
            self.errors.push(name, "missing", "file required");
            return None;
        };
        let ct = part
            .content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let accepted = types.iter().any(|t| match t.strip_suffix("/*") {
            Some(prefix) => ct.split('/').next() == Some(prefix),
            None => ct == *t,
        });
        if ct.is_empty() {
            self.errors.push(
                name,
                "missing_content_type",
                format!(
                    "the file part has no Content-Type and its bytes are not recognised \
                     (accepted: {})",
                    types.join(", ")
                ),
            );
        } else if !accepted {
            self.errors.push(
                name,
                "unsupported_media_type",
                format!(
                    "type {ct:?} is not accepted (accepted: {})",
                    types.join(", ")
                ),
            );
        }
        if part.len == 0 {
            self.errors.push(name, "empty_file", "file is empty");
        }
        Some(part.clone())
    }

    pub(super) fn model(&mut self, capability: Capability) -> String {
        self.model_field("model_id", capability)
    }

    /// The model named in field `name`, else (and documented as the default) the
    /// capability's default model.
    pub(super) fn model_field(&mut self, name: &str, capability: Capability) -> String {
        let model = self.text(name, false, "");
        if let Some(spec) = self.schema.iter_mut().find(|f| f.name == name) {
            spec.default = Some(Value::String(capability.default_model().to_owned()));
        }
        if model.is_empty() {
            capability.default_model().to_owned()
        } else {
            model
        }
    }

    pub(super) fn finish<T>(self, value: T) -> Result<T, ValidationErrors> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(self.errors)
        }
    }
}
