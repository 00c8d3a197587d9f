//! The plugin's end-to-end tests against a private cluster of the
//! PostgreSQL major in `WALCAST_PG_MAJOR`: one test binary, one module per
//! subject (`cargo test -p walcast-tests --test plugin golden::`).

mod doctor;
mod errors;
mod fields;
mod golden;
mod positions;
mod streaming;
mod toast;
mod values;
