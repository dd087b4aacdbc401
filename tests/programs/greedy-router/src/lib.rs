//! A router that also imports `weir:host/transcode`, which the router world does not grant:
//! the host must refuse to load it.

wit_bindgen::generate!({
    inline: "
        package test:greedy;
        world greedy-router {
            include weir:host/router@0.1.0;
            import weir:host/transcode@0.1.0;
        }
    ",
    path: "../../../wit",
    world: "test:greedy/greedy-router",
    generate_all,
});

use exports::weir::host::routing::Guest;
use weir::host::types::{Candidate, Error, JobRequest};

struct Greedy;

impl Guest for Greedy {
    fn select(request: JobRequest, candidates: Vec<Candidate>) -> Result<Vec<u32>, Error> {
        if request.id == "transcode" {
            // Referencing the import keeps it in the component.
            let _ = weir::host::transcode::ladder;
            return Err(Error::Unsupported(format!(
                "{:p}",
                weir::host::transcode::ladder as *const ()
            )));
        }
        Ok((0..candidates.len() as u32).collect())
    }
}

export!(Greedy);
