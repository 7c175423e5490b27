//! Runnable twopc examples.
//!
//! - [`bank`]: a bank service that takes part in transfers as a twopc participant, on SQLite,
//!   PostgreSQL or MariaDB/MySQL (binaries `bank-participant` and `bank-transfer`).

pub mod bank;
