//! Micro-benchmarks of the download hot path's own functions (criterion):
//! `cargo bench --bench hot`.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use scomo_ads::ads::cache::ChunkCache;
use scomo_ads::ads::download::range::{decide, RangeDecision};
use scomo_ads::ads::tickets::coverage::Coverage;
use scomo_ads::ads::token::{Keyring, TicketId};

fn token_verify(c: &mut Criterion) {
    let ring = Keyring::single(1, [7; 32]);
    let token = ring.mint(TicketId([3; 16]), u32::MAX);
    c.bench_function("token verify", |b| {
        b.iter(|| ring.verify(black_box(&token), black_box(1_800_000_000)))
    });
}

fn range_parse(c: &mut Criterion) {
    c.bench_function("range parse single", |b| {
        b.iter(|| {
            decide(
                black_box("bytes=1048576-2097151"),
                black_box(104_857_600),
                16,
            )
        })
    });
    c.bench_function("range parse multi", |b| {
        b.iter(|| {
            let d = decide(
                black_box("bytes=0-99,200-299,-50"),
                black_box(1_000_000),
                16,
            );
            assert!(matches!(d, RangeDecision::Multi(_)));
            d
        })
    });
}

fn coverage_merge(c: &mut Criterion) {
    c.bench_function("coverage insert (2 KiB ranges, 512 pieces)", |b| {
        b.iter(|| {
            let mut cov = Coverage::new();
            for i in (0..512u64).rev() {
                cov.insert(i * 2048, i * 2048 + 2048);
            }
            black_box(cov.covers(512 * 2048))
        })
    });
}

fn cache_hit(c: &mut Criterion) {
    let cache = ChunkCache::new(64 << 20, 128 << 10);
    let dir = std::env::temp_dir().join(format!("scomo-bench-{}", std::process::id()));
    std::fs::write(&dir, vec![5u8; 256 << 10]).unwrap_or(());
    let key = ([9u8; 32], 1u64);
    let _ = cache.load_blocking(key, &dir, 256 << 10);
    c.bench_function("chunk cache hit", |b| {
        b.iter(|| {
            let chunk: Option<Bytes> = cache.get(black_box(&key));
            black_box(chunk.map(|c| c.slice(0..1024)))
        })
    });
    let _ = std::fs::remove_file(&dir);
}

criterion_group!(hot, token_verify, range_parse, coverage_merge, cache_hit);
criterion_main!(hot);
