//! Every fuzz target as a bounded property test on stable Rust: the committed
//! seeds first, then inputs mutated from them (bit flips, byte changes,
//! insertions, deletions, splices of two seeds) for
//! `OIDC_EDGE_FUZZ_SECONDS` per target (default 2). The mutation stream is
//! seeded from `OIDC_EDGE_FUZZ_SEED` (default: the clock), printed, so a
//! failure can be replayed. An input that fails is written to
//! `fuzz/artifacts/<target>/` and the test fails naming it.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: fast, and reproducible from the printed seed.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING: &[&[u8]] =
    &[b"/", b"..", b".", b"%2e", b"%2F", b"%", b";", b"\\", b"//", b"\0", b"\xff", b"=", b"&", b"\"", b"{", b"}", b":", b"\n"];

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], input: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        match rng.below(6) {
            0 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] ^= 1 << rng.below(8);
            }
            1 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(input.len() + 1);
                let piece = INTERESTING[rng.below(INTERESTING.len())];
                input.splice(i..i, piece.iter().copied());
            }
            3 if !input.is_empty() => {
                let i = rng.below(input.len());
                let n = 1 + rng.below((input.len() - i).min(8));
                input.drain(i..i + n);
            }
            4 if !seeds.is_empty() => {
                let other = &seeds[rng.below(seeds.len())];
                let cut = rng.below(input.len() + 1);
                let from = rng.below(other.len() + 1);
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            _ => input.push(rng.next() as u8),
        }
    }
    input.truncate(4096);
}

fn seeds(dir: &Path) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}: every target needs a seed corpus", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap_or_default()).collect()
}

fn run(name: &str, target: fn(&[u8]), input: &[u8]) -> Result<(), String> {
    catch_unwind(AssertUnwindSafe(|| target(input))).map_err(|panic| {
        let why = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts").join(name);
        let _ = std::fs::create_dir_all(&dir);
        let file = dir.join(format!("crash-{:016x}", fxhash(input)));
        let _ = std::fs::write(&file, input);
        format!("{name}: {} (input saved to {})", why.unwrap_or_default(), file.display())
    })
}

fn fxhash(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

#[test]
fn every_target_holds_on_its_seeds_and_their_mutations() {
    let seconds: f64 = std::env::var("OIDC_EDGE_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let seed: u64 = std::env::var("OIDC_EDGE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1);
    println!("OIDC_EDGE_FUZZ_SEED={seed} OIDC_EDGE_FUZZ_SECONDS={seconds}");
    // The targets' own assertions report through the panic hook; keep the
    // output to the summary below.
    std::panic::set_hook(Box::new(|_| {}));
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut failures = Vec::new();
    for &(name, target) in oidc_edge_fuzz::TARGETS {
        let seeds = seeds(&corpus.join(name));
        assert!(!seeds.is_empty(), "{name}: empty seed corpus");
        let mut rng = Rng(seed ^ fxhash(name.as_bytes()) | 1);
        let mut runs = 0u64;
        let mut failed = None;
        for s in &seeds {
            runs += 1;
            if let Err(e) = run(name, target, s) {
                failed = Some(e);
                break;
            }
        }
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        while failed.is_none() && Instant::now() < deadline {
            let mut input = seeds[rng.below(seeds.len())].clone();
            for _ in 0..64 {
                mutate(&mut rng, &seeds, &mut input);
                runs += 1;
                if let Err(e) = run(name, target, &input) {
                    failed = Some(e);
                    break;
                }
            }
        }
        println!("{name:>20}: {runs} inputs, {}", if failed.is_some() { "FAILED" } else { "no finding" });
        failures.extend(failed);
    }
    let _ = std::panic::take_hook();
    assert!(failures.is_empty(), "fuzz findings:\n{}", failures.join("\n"));
}
