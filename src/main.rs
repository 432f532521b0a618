//! The `graftdb` command-line tool: a thin client of the graftdb library.

mod cli;

use clap::Parser;

fn main() {
    let parsed = cli::args::Cli::parse();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let res = cli::run(parsed, &mut out).and_then(|()| std::io::Write::flush(&mut out).map_err(Into::into));
    if let Err(e) = res {
        // A closed pipe (e.g. `| head`) is not a failure.
        if e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)) {
            std::process::exit(0);
        }
        let _ = std::io::Write::flush(&mut out);
        eprintln!("graftdb: {e:#}");
        std::process::exit(1);
    }
}
