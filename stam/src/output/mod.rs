//! Renderings of a [`Snapshot`](crate::Snapshot): text table, JSON,
//! Prometheus text exposition and VirtualBox's XML snapshot form.

#[cfg(feature = "json")]
mod json;
mod prometheus;
mod text;
mod xml;
