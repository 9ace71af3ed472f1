//! The PostgreSQL wire protocol: agents connect with any PostgreSQL client, authenticate with
//! their token as the password, and every statement is classified by PostgreSQL's own grammar and
//! decided before it reaches the database.

pub mod classify;
pub mod message;
