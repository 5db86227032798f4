//! Commands parsed per second: `cargo bench -p mailgate-immp --bench parse`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mailgate_immp::codec::parse_line;
use std::hint::black_box;

const LINES: &[&str] = &[
    "NOOP",
    "AS f9ca MBOX INDEX /inbox::unread +JSON",
    "AS beef MBOX FETCH /inbox#9507ce26-d34e-41cb-9f14-4eeff943e25e +JSON -READ",
    r#"AUTH SECRET noccy@noccylabs.info "Desktop Computer (Mail Client)""#,
    "DELIVER TO noccy+analytics@noccylabs.info, bob@example.com +IMPORTANT +MULTIPART",
    "DATA index.html TYPE text/html LENGTH 1742 +CONTENT",
    "AS a NOOP; AS b MBOX CHECK /inbox::* +RECURSIVE; QUIT",
];

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("immp");
    g.throughput(Throughput::Elements(LINES.len() as u64));
    g.bench_function("parse_line", |b| {
        b.iter(|| {
            for line in LINES {
                let _ = black_box(parse_line(black_box(line)));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
