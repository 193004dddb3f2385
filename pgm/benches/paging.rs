//! Page-walk and TLB-hit costs.

use criterion::{Criterion, criterion_group, criterion_main};

fn benches(_c: &mut Criterion) {}

criterion_group!(paging, benches);
criterion_main!(paging);
