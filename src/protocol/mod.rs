//! RCP wire protocol: frames, operation names, request envelopes and their
//! parameters, response envelopes.

pub mod frame;
pub mod json_tape;
pub mod op;
pub mod params;
pub mod request;
pub mod response;
