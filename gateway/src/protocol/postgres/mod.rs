//! The PostgreSQL wire protocol: agents connect with any PostgreSQL client, authenticate with
//! their token as the password, and every statement is classified by PostgreSQL's own grammar and
//! decided before it reaches the database.

pub mod binary;
pub mod cancel;
pub mod catalog;
pub mod classify;
pub mod cursors;
pub mod follow;
pub mod handshake;
pub mod message;
pub mod rows;
pub mod session;
pub mod statement_text;
pub mod stream;
pub mod upstream;
