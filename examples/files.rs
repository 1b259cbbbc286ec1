//! The small demo without a server: 60 tests, each in its own container of the host image
//! with a seeded data layer, each rewriting and deleting the same files and asserting it
//! saw exactly the seed. `cargo run --example files` (add `-- --list`, filters, etc.).

use std::path::PathBuf;

use pristine::testing::Harness;
use pristine::{Image, LayerSpec, Recipe, Store};

const SEED: &[(&str, &str)] = &[
    ("users.csv", "id,name\n1,ada\n2,grace\n"),
    ("orders.csv", "id,user,total\n1,1,42\n"),
];

/// The seed layer: a recipe whose one step writes the seed files. Built once into
/// pristine's store (content-addressed: editing `SEED` rebuilds it), looked up in well under
/// a millisecond afterwards; evaluated once per process, only when a test runs.
fn seeded() -> Result<Image, pristine::BuildError> {
    let script: String = std::iter::once("mkdir -p /srv/data".to_string())
        .chain(
            SEED.iter()
                .map(|(name, body)| format!("printf '%s' '{body}' > /srv/data/{name}")),
        )
        .collect::<Vec<_>>()
        .join(" && ");
    Recipe::host()
        .layer(LayerSpec::new("files-seed").run(["sh", "-c", script.as_str()]))
        .build(&Store::open_default()?)
}

fn main() {
    let mut h = Harness::new().image(seeded);
    for i in 0..60 {
        h = h.test(format!("sees_exactly_the_seed_{i:02}"), move |_| {
            let data = PathBuf::from("/srv/data");
            for (name, body) in SEED {
                let got = std::fs::read_to_string(data.join(name))?;
                if got != *body {
                    return Err(format!("{name}: {got:?}, another test's write leaked in").into());
                }
            }
            std::fs::write(data.join("users.csv"), format!("id,name\n{i},test-{i}\n"))?;
            std::fs::remove_file(data.join("orders.csv"))?;
            Ok(())
        });
    }
    h.run()
}
