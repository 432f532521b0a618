//! Crash test: a child process ingests batches and is killed with SIGKILL at 24 random
//! moments; after each kill the database is reopened and checked.
//!
//! The child is this same test binary, re-executed with `GRAFTDB_CRASH_CHILD=<db dir>`. It
//! commits batch after batch (one write transaction each, records plus vectors) and prints
//! `ACK <batch>` once `commit()` has returned. Every third batch it runs `checkpoint()`
//! between `CKPT <batch>` and `CKPTDONE <batch>`, so snapshot and graph writes are
//! interrupted too: one kill in three waits for a `CKPT` line and strikes up to 300 ms later,
//! and one in three strikes a few milliseconds after an `ACK`, inside the next batch (that
//! child is started without checkpoints, so the kill cannot drift into one).
//!
//! After each kill, with the database reopened:
//! - every acknowledged batch is fully present (get by id for every id, with the right
//!   vector), and an exact query with a bbox around the batch returns exactly its records;
//! - no batch is partial: each batch has all of its ids or none, and the batches present are
//!   a prefix 0..P (P may exceed the acknowledged count by one commit whose ACK was lost);
//! - the vector arena holds exactly one row per committed vector (`Explain::rows` and an
//!   exact unfiltered query with a huge k both equal the committed count), and a graph query
//!   returns only committed records and never fewer than k.
//!
//! There is no public `check` API in the library yet; these invariants stand in for it.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use graftdb::{Db, Filter, Kind, Level, Metric, Options, Photo, Query, Record, RecordId, Region};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

const CHILD_ENV: &str = "GRAFTDB_CRASH_CHILD";
const START_ENV: &str = "GRAFTDB_CRASH_START";
/// Set to 0 in the rounds that kill inside a batch: that child never checkpoints, so the kill
/// lands in an insert or a commit however fast the build is (a release build finishes a batch
/// in well under a millisecond, and a kill a few milliseconds after an ACK used to land in the
/// next checkpoint instead).
const CKPT_ENV: &str = "GRAFTDB_CRASH_CKPT";
const TEST_NAME: &str = "acknowledged_batches_survive_sigkill";
const SPACE: &str = "emb";
const DIM: usize = 16;
const KILLS: usize = 24;

fn opts() -> Options {
    Options { exact_threshold: 50, hnsw_min_rows: 100, delta_max: 200, threads: 1, persist_index: true, ..Options::default() }
}

fn batch_size(b: u64) -> u64 {
    10 + (b * 7_919) % 31
}

fn batch_centre(b: u64) -> (f64, f64) {
    (-175.0 + (b % 140) as f64 * 2.5, -70.0 + ((b / 140) % 56) as f64 * 2.5)
}

fn record(b: u64, i: u64) -> (Record, Vec<f32>) {
    let (cx, cy) = batch_centre(b);
    let id = (b * 1_000 + i) as i64;
    let rec = Record::Photo(Photo {
        id: RecordId::Int(id),
        lon: cx + (i % 7) as f64 * 0.002,
        lat: cy + (i / 7) as f64 * 0.002,
        accuracy: Some(16),
        time: Some(1_600_000_000_000_000 + id),
        source: "crash".into(),
        license: None,
        url: None,
        user: None,
    });
    let mut rng = StdRng::seed_from_u64(id as u64);
    let n = Normal::new(0.0f32, 1.0).unwrap();
    let v = (0..DIM).map(|_| n.sample(&mut rng)).collect();
    (rec, v)
}

/// The child: ingest from batch `start` on until killed.
fn child(dir: &str) {
    let start: u64 = std::env::var(START_ENV).unwrap().parse().unwrap();
    let checkpoints = std::env::var(CKPT_ENV).map_or(true, |v| v != "0");
    let db = Db::open_with(dir, opts()).unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out, "OPEN {start}").unwrap();
    out.flush().unwrap();
    for b in start.. {
        let mut w = db.begin_write().unwrap();
        for i in 0..batch_size(b) {
            let (rec, v) = record(b, i);
            let key = w.insert(rec).unwrap();
            w.put_vector(SPACE, key, &v).unwrap();
        }
        w.commit().unwrap();
        writeln!(out, "ACK {b}").unwrap();
        out.flush().unwrap();
        if checkpoints && b % 3 == 2 {
            writeln!(out, "CKPT {b}").unwrap();
            out.flush().unwrap();
            db.checkpoint().unwrap();
            writeln!(out, "CKPTDONE {b}").unwrap();
            out.flush().unwrap();
        }
    }
}

struct Verified {
    present: u64,
    vectors: u64,
}

/// Reopen and check every invariant; returns the number of batches present.
fn verify(dir: &std::path::Path, acked: Option<u64>, round: usize) -> Verified {
    let db = Db::open_with(dir, opts()).unwrap_or_else(|e| panic!("round {round}: reopen failed: {e}"));
    let mut present = 0u64;
    let mut total = 0u64;
    let mut b = 0u64;
    loop {
        let n = batch_size(b);
        let mut found = 0;
        for i in 0..n {
            let (rec, v) = record(b, i);
            if let Some((key, got)) = db.get(Some(Kind::Photo), rec.id()).unwrap() {
                found += 1;
                assert_eq!(got, rec, "round {round}: batch {b} record {i} differs");
                let stored = db.vector(SPACE, key).unwrap().unwrap_or_else(|| panic!("round {round}: batch {b} record {i} has no vector"));
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                assert!(stored.iter().zip(&v).all(|(s, x)| (s - x / norm).abs() < 1e-5), "round {round}: vector of batch {b} record {i}");
            }
        }
        assert!(found == 0 || found == n, "round {round}: batch {b} is partial: {found} of {n} records visible");
        if found == 0 {
            break;
        }
        // Searchable: an exact bbox query around the batch returns exactly its records.
        let (cx, cy) = batch_centre(b);
        let f = Filter { regions: vec![Region::bbox(cx - 0.1, cy - 0.1, cx + 0.1, cy + 0.1).unwrap()], ..Default::default() };
        let (_, probe) = record(b, 0);
        let res = db.search(&Query::new(SPACE, probe, 100).filter(f).exact(true)).unwrap();
        let mut ids: Vec<i64> = res.hits.iter().map(|h| if let RecordId::Int(i) = h.id { i } else { -1 }).collect();
        ids.sort_unstable();
        let want: Vec<i64> = (0..n).map(|i| (b * 1_000 + i) as i64).collect();
        assert_eq!(ids, want, "round {round}: bbox query around batch {b}");
        present += 1;
        total += n;
        b += 1;
    }
    // Batches after the first gap must be absent too (a prefix is committed).
    for gap in b + 1..b + 4 {
        let (rec, _) = record(gap, 0);
        assert!(db.get(None, rec.id()).unwrap().is_none(), "round {round}: batch {gap} visible after missing batch {b}");
    }
    if let Some(a) = acked {
        assert!(present > a, "round {round}: batch {a} was acknowledged but only {present} batches are present");
    }
    // One arena row per committed vector, no more, no less.
    let all = db.search(&Query::new(SPACE, vec![1.0; DIM], 1_000_000).exact(true)).unwrap();
    assert_eq!(all.hits.len() as u64, total, "round {round}: exact scan count");
    assert_eq!(all.explain.rows, total, "round {round}: arena rows {:?}", all.explain);
    // The graph (if any) agrees: a graph query fills k from committed records only.
    let (_, q) = record(present.saturating_sub(1), 3);
    let k = 25.min(total as usize);
    let res = db.search(&Query::new(SPACE, q, k)).unwrap();
    assert_eq!(res.hits.len(), k, "round {round}: graph query came up short: {:?}", res.explain);
    for h in &res.hits {
        let RecordId::Int(id) = h.id else { panic!("string id") };
        let (hb, hi) = (id as u64 / 1_000, id as u64 % 1_000);
        assert!(hb < present && hi < batch_size(hb), "round {round}: graph returned {id}, not committed");
    }
    Verified { present, vectors: total }
}

#[test]
fn acknowledged_batches_survive_sigkill() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(&dir);
        return;
    }
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("crash.graftdb");
    {
        let db = Db::create_with(&dir, opts()).unwrap();
        db.create_space(SPACE, DIM as u32, Metric::Cos, Level::Image).unwrap();
    }
    let exe = std::env::current_exe().unwrap();
    let mut rng = StdRng::seed_from_u64(0xC4A5_4001);
    let mut acked: Option<u64> = None;
    let mut start = 0u64;
    let (mut in_checkpoint, mut in_batch, mut lost_acks) = (0, 0, 0);
    let mut last = Verified { present: 0, vectors: 0 };
    for round in 0..KILLS {
        let mut c = Command::new(&exe)
            .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &dir)
            .env(START_ENV, start.to_string())
            .env(CKPT_ENV, if round % 3 == 1 { "0" } else { "1" })
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = c.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        // Three kinds of kill in turn: at a random moment; a few milliseconds after an ACK
        // that is followed by the next batch (so inside its inserts or commit); and inside a
        // checkpoint (graph build, snapshot write or manifest rename).
        let wait_for: Option<fn(&str) -> bool> = match round % 3 {
            0 => None,
            1 => Some(|l: &str| l.starts_with("ACK ")),
            _ => Some(|l: &str| l.starts_with("CKPT ")),
        };
        if let Some(hit) = wait_for {
            let deadline = Instant::now() + Duration::from_secs(60);
            // Skip a random number of matching lines so kills fall at different sizes.
            let mut skip = rng.random_range(0..3);
            while Instant::now() < deadline {
                match rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(l) => {
                        let m = hit(&l);
                        lines.push(l);
                        if m {
                            if skip == 0 {
                                break;
                            }
                            skip -= 1;
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
            let ms = if round % 3 == 1 { rng.random_range(0..8) } else { rng.random_range(0..300) };
            std::thread::sleep(Duration::from_millis(ms));
        } else {
            std::thread::sleep(Duration::from_millis(rng.random_range(30..900)));
        }
        if let Some(status) = c.try_wait().unwrap() {
            panic!("round {round}: child exited by itself with {status} (see its stderr above)");
        }
        c.kill().unwrap();
        c.wait().unwrap();
        reader.join().unwrap();
        lines.extend(rx.try_iter());
        for l in &lines {
            if let Some(b) = l.strip_prefix("ACK ") {
                acked = Some(b.parse().unwrap());
            }
        }
        let last_line = lines.last().cloned().unwrap_or_default();
        if last_line.starts_with("CKPT ") {
            in_checkpoint += 1;
        } else if last_line.starts_with("ACK ") || last_line.starts_with("CKPTDONE ") || last_line.starts_with("OPEN ") {
            in_batch += 1;
        }
        let v = verify(&dir, acked, round);
        assert!(v.present >= last.present, "round {round}: batches went missing ({} → {})", last.present, v.present);
        if acked.is_some_and(|a| v.present > a + 1) || (acked.is_none() && v.present > 0) {
            lost_acks += 1;
        }
        println!(
            "round {round:2}: killed after {:<14} acked up to {:?}, present {} batches / {} vectors",
            last_line,
            acked,
            v.present,
            v.vectors
        );
        start = v.present;
        acked = Some(v.present).filter(|p| *p > 0).map(|p| p - 1).max(acked);
        last = v;
    }
    println!(
        "{KILLS} kills: {in_checkpoint} during a checkpoint, {in_batch} during a batch; {lost_acks} with a committed but unacknowledged batch; {} batches, {} vectors; {:.1?}",
        last.present,
        last.vectors,
        t0.elapsed()
    );
    assert!(last.present >= KILLS as u64, "the child made too little progress to mean anything: {} batches", last.present);
    assert!(in_checkpoint >= 3, "only {in_checkpoint} kills landed inside a checkpoint");
    assert!(in_batch >= 3, "only {in_batch} kills landed inside a batch");
}
