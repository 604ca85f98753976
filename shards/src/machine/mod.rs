//! Machine definitions: the JSON DSL, validation, normal form, checksum, and
//! the guard expression language.

pub mod definition;
pub mod guard;
