//! Arguments of every public entry point, taken as raw JS values and checked here, so that a wrong
//! type, a non-integer size, a BigInt, an out-of-range number or an unknown option key fails with a
//! documented code naming the argument — napi's own conversions would wrap `2 ** 32 + 1` to 1,
//! truncate 2.5 to 2 and report `NumberExpected` without a name. Positional arguments fail with
//! `INVALID_ARGUMENT`; values inside a config or options object with `INVALID_CONFIG` (naming the
//! field). Translation only: no value is computed here.

use moe_core::MoeError;
use napi::bindgen_prelude::*;
use napi::{sys, JsValue, ValueType};
use serde_json::{Map, Value};

pub(crate) type R<T> = moe_core::Result<T>;

fn bad(what: &str, msg: impl std::fmt::Display) -> MoeError {
    MoeError::InvalidArgument(format!("{what} {msg}"))
}

/// The same error as an option or config field (`INVALID_CONFIG`).
pub(crate) fn as_option(e: MoeError) -> MoeError {
    match e {
        MoeError::InvalidArgument(m) => MoeError::InvalidConfig(m),
        e => e,
    }
}

fn type_name(v: &Unknown) -> &'static str {
    match v.get_type() {
        Ok(ValueType::Undefined) => "undefined",
        Ok(ValueType::Null) => "null",
        Ok(ValueType::Boolean) => "a boolean",
        Ok(ValueType::Number) => "a number",
        Ok(ValueType::String) => "a string",
        Ok(ValueType::Symbol) => "a symbol",
        Ok(ValueType::Object) => "an object",
        Ok(ValueType::Function) => "a function",
        Ok(ValueType::External) => "an external",
        Ok(ValueType::BigInt) => "a BigInt",
        _ => "an unknown value",
    }
}

fn is(v: &Unknown, t: ValueType) -> bool {
    v.get_type().is_ok_and(|x| x == t)
}

/// `v` is absent (undefined or null).
pub(crate) fn absent(v: &Option<Unknown>) -> bool {
    v.as_ref().is_none_or(|v| is(v, ValueType::Undefined) || is(v, ValueType::Null))
}

/// A JS number (NaN and infinities included: the core refuses them where they are not meaningful,
/// with `NON_FINITE` naming the argument).
pub(crate) fn number(what: &str, v: Unknown) -> R<f64> {
    if !is(&v, ValueType::Number) {
        let hint = if is(&v, ValueType::BigInt) { "; pass a Number" } else { "" };
        return Err(bad(what, format!("must be a number, got {}{hint}", type_name(&v))));
    }
    // SAFETY: the value is a number.
    unsafe { v.cast::<f64>() }.map_err(|e| bad(what, e))
}

/// An integer in [min, max] given as a JS number.
pub(crate) fn integer(what: &str, v: Unknown, min: u64, max: u64) -> R<u64> {
    let x = number(what, v)?;
    if !(x.fract() == 0.0 && x >= min as f64 && x <= max as f64) {
        return Err(bad(what, format!("must be an integer in [{min}, {max}], got {x}")));
    }
    Ok(x as u64)
}

/// A count such as a number of sequences or tokens: an integer in [min, 2^32 - 1].
pub(crate) fn count(what: &str, v: Unknown, min: u32) -> R<usize> {
    integer(what, v, min as u64, u32::MAX as u64).map(|x| x as usize)
}

pub(crate) fn string(what: &str, v: Unknown) -> R<String> {
    if !is(&v, ValueType::String) {
        return Err(bad(what, format!("must be a string, got {}", type_name(&v))));
    }
    // SAFETY: the value is a string.
    unsafe { v.cast::<String>() }.map_err(|e| bad(what, e))
}

pub(crate) fn boolean(what: &str, v: Unknown) -> R<bool> {
    if !is(&v, ValueType::Boolean) {
        return Err(bad(what, format!("must be a boolean, got {}", type_name(&v))));
    }
    // SAFETY: the value is a boolean.
    unsafe { v.cast::<bool>() }.map_err(|e| bad(what, e))
}

fn typed_array_type(v: &Unknown) -> Option<sys::napi_typedarray_type> {
    let raw = v.value();
    let (env, value) = (raw.env, raw.value);
    let mut is_ta = false;
    // SAFETY: env and value come from a live JS value of this call.
    if unsafe { sys::napi_is_typedarray(env, value, &mut is_ta) } != sys::Status::napi_ok || !is_ta {
        return None;
    }
    let mut kind = 0;
    let (mut len, mut data, mut buf, mut off) = (0usize, std::ptr::null_mut(), std::ptr::null_mut(), 0usize);
    // SAFETY: as above; the out pointers are valid locals.
    let ok = unsafe { sys::napi_get_typedarray_info(env, value, &mut kind, &mut len, &mut data, &mut buf, &mut off) } == sys::Status::napi_ok;
    ok.then_some(kind)
}

macro_rules! typed {
    ($fn:ident, $slice:ty, $elem:ty, $kind:expr, $js:literal) => {
        /// A copy of a typed array of exactly this element type.
        pub(crate) fn $fn(what: &str, v: Unknown) -> R<Vec<$elem>> {
            if typed_array_type(&v) != Some($kind) {
                return Err(bad(what, format!("must be a {}, got {}", $js, type_name(&v))));
            }
            // SAFETY: checked to be a typed array of this type.
            let s = unsafe { v.cast::<$slice>() }.map_err(|e| bad(what, e))?;
            Ok(s.to_vec())
        }
    };
}
typed!(u32s, Uint32ArraySlice, u32, sys::TypedarrayType::uint32_array, "Uint32Array");
typed!(f32s, Float32ArraySlice, f32, sys::TypedarrayType::float32_array, "Float32Array");
typed!(u8s, Uint8ArraySlice, u8, sys::TypedarrayType::uint8_array, "Uint8Array");
typed!(f64s, Float64ArraySlice, f64, sys::TypedarrayType::float64_array, "Float64Array");

/// A Float32Array to write into (e.g. `getGrads(out)`).
pub(crate) fn f32_out(what: &str, v: Unknown) -> R<Float32Array> {
    if typed_array_type(&v) != Some(sys::TypedarrayType::float32_array) {
        return Err(bad(what, format!("must be a Float32Array, got {}", type_name(&v))));
    }
    // SAFETY: checked to be a Float32Array.
    unsafe { v.cast::<Float32Array>() }.map_err(|e| bad(what, e))
}

/// An options object: None when absent, its fields by name otherwise; a key outside `keys` fails
/// (a typo must not be silently ignored).
pub(crate) struct Options<'a> {
    what: &'static str,
    obj: Option<Object<'a>>,
}

pub(crate) fn options<'a>(what: &'static str, v: Option<Unknown<'a>>, keys: &[&str]) -> R<Options<'a>> {
    if absent(&v) {
        return Ok(Options { what, obj: None });
    }
    let v = v.unwrap();
    if !is(&v, ValueType::Object) || typed_array_type(&v).is_some() || is_array(&v) {
        return Err(MoeError::InvalidConfig(format!("{what} must be an object, got {}", type_name(&v))));
    }
    // SAFETY: the value is an object.
    let obj = unsafe { v.cast::<Object>() }.map_err(|e| bad(what, e))?;
    for k in Object::keys(&obj).map_err(|e| bad(what, e))? {
        if !keys.contains(&k.as_str()) {
            return Err(MoeError::InvalidConfig(format!("{what}.{k} is not an option (the options are {})", keys.join(", "))));
        }
    }
    Ok(Options { what, obj: Some(obj) })
}

impl<'a> Options<'a> {
    /// Field `key`, None when absent (undefined).
    pub(crate) fn get(&self, key: &str) -> R<Option<Unknown<'a>>> {
        let Some(obj) = &self.obj else { return Ok(None) };
        let v: Option<Unknown> = obj.get(key).map_err(|e| bad(self.what, e))?;
        Ok(v.filter(|v| !is(v, ValueType::Undefined)))
    }

    /// Field `key` checked by `f`; its errors are option errors naming `what.key`.
    pub(crate) fn field<T>(&self, key: &str, f: impl FnOnce(&str, Unknown<'a>) -> R<T>) -> R<Option<T>> {
        match self.get(key)? {
            None => Ok(None),
            Some(v) => f(&format!("{}.{key}", self.what), v).map(Some).map_err(as_option),
        }
    }
}

fn is_array(v: &Unknown) -> bool {
    let raw = v.value();
    let (env, value) = (raw.env, raw.value);
    let mut r = false;
    // SAFETY: env and value come from a live JS value of this call.
    let status = unsafe { sys::napi_is_array(env, value, &mut r) };
    status == sys::Status::napi_ok && r
}

/// A plain JSON value from a JS config or options object, refusing what JSON cannot hold: NaN and
/// infinities, BigInts, functions, symbols, typed arrays (`INVALID_CONFIG` naming the field).
/// Integral numbers become JSON integers, so that a size of 2.5 stays 2.5 for the core to refuse.
pub(crate) fn json(what: &str, v: Unknown) -> R<Value> {
    to_json(what, v, 0)
}

fn to_json(path: &str, v: Unknown, depth: usize) -> R<Value> {
    let err = |m: String| MoeError::InvalidConfig(format!("{path} {m}"));
    if depth > 32 {
        return Err(err("nests too deep (a cycle?)".into()));
    }
    match v.get_type().map_err(|e| err(e.to_string()))? {
        ValueType::Null => Ok(Value::Null),
        ValueType::Boolean => boolean(path, v).map(Value::Bool),
        ValueType::String => string(path, v).map(Value::String),
        ValueType::Number => {
            let x = number(path, v)?;
            if !x.is_finite() {
                let js = if x.is_nan() { "NaN" } else if x > 0.0 { "Infinity" } else { "-Infinity" };
                return Err(err(format!("is {js}: must be a finite number")));
            }
            if x.fract() == 0.0 && x.abs() <= 9007199254740992.0 {
                return Ok(if x < 0.0 { Value::from(x as i64) } else { Value::from(x as u64) });
            }
            Ok(serde_json::Number::from_f64(x).map(Value::Number).unwrap_or(Value::Null))
        }
        ValueType::Object if typed_array_type(&v).is_some() => Err(err("must be plain JSON, got a typed array".into())),
        ValueType::Object if is_array(&v) => {
            // SAFETY: the value is an array.
            let arr = unsafe { v.cast::<Array>() }.map_err(|e| err(e.to_string()))?;
            (0..arr.len())
                .map(|i| {
                    let item: Unknown = arr.get(i).map_err(|e| err(e.to_string()))?.ok_or_else(|| err(format!("[{i}] is missing")))?;
                    to_json(&format!("{path}[{i}]"), item, depth + 1)
                })
                .collect::<R<Vec<_>>>()
                .map(Value::Array)
        }
        ValueType::Object => {
            // SAFETY: the value is an object.
            let obj = unsafe { v.cast::<Object>() }.map_err(|e| err(e.to_string()))?;
            let mut out = Map::new();
            for k in Object::keys(&obj).map_err(|e| err(e.to_string()))? {
                let item: Option<Unknown> = obj.get(&k).map_err(|e| err(e.to_string()))?;
                match item {
                    Some(item) if !is(&item, ValueType::Undefined) => {
                        out.insert(k.clone(), to_json(&format!("{path}.{k}"), item, depth + 1)?);
                    }
                    _ => {}
                }
            }
            Ok(Value::Object(out))
        }
        ValueType::BigInt => Err(err("is a BigInt: pass a Number".into())),
        ValueType::Undefined => Err(err("is undefined".into())),
        _ => Err(err(format!("must be plain JSON, got {}", type_name(&v)))),
    }
}

/// An object argument as JSON (a config or options object); absent = `{}`.
pub(crate) fn json_object(what: &str, v: Option<Unknown>) -> R<Value> {
    if absent(&v) {
        return Ok(Value::Object(Map::new()));
    }
    let v = v.unwrap();
    if !is(&v, ValueType::Object) || is_array(&v) {
        return Err(MoeError::InvalidConfig(format!("{what} must be an object, got {}", type_name(&v))));
    }
    json(what, v)
}
