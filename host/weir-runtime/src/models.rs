//! Model runners for components (`weir:host/models.invoke`).
//!
//! A component may run only the models its manifest grants (`[permissions] models`, entries
//! `capability/model-id` or `capability/*`); the node gives the runtime its runners once with
//! [`crate::Runtime::provide_models`] (an orchestrator's configured models), and until then
//! `invoke` answers `unsupported`. A call blocks the guest's (blocking-pool) thread at most
//! until the guest call's deadline.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::bindings::types::{Error as GuestError, Param};
use crate::media::Blob;

/// The node's model runners as components see them.
pub trait ModelSource: Send + Sync {
    /// Run `model_id` of `capability` on `params` and `inputs` until `deadline` at most; the
    /// output objects and scalar outputs.
    fn invoke(
        &self,
        capability: &str,
        model_id: &str,
        params: &[Param],
        inputs: Vec<Blob>,
        deadline: Instant,
    ) -> Result<(Vec<Blob>, Vec<Param>), GuestError>;
}

/// Where components find the node's runners (set once, possibly after they loaded).
pub(crate) type ModelSlot = Arc<OnceLock<Arc<dyn ModelSource>>>;

/// Whether `grants` (`capability/model-id` or `capability/*`) allow `capability`/`model_id`.
pub(crate) fn granted(grants: &[String], capability: &str, model_id: &str) -> bool {
    grants.iter().any(|g| match g.split_once('/') {
        Some((c, "*")) => c == capability,
        Some((c, m)) => c == capability && m == model_id,
        None => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_names_one_model_or_every_model_of_a_capability() {
        let grants = vec![
            "upscale/upscalerjs/default-model".to_owned(),
            "image-to-image/*".to_owned(),
        ];
        assert!(granted(&grants, "upscale", "upscalerjs/default-model"));
        assert!(!granted(&grants, "upscale", "other"));
        assert!(granted(&grants, "image-to-image", "anything/at-all"));
        assert!(!granted(
            &grants,
            "text-to-image",
            "upscalerjs/default-model"
        ));
        assert!(!granted(&[], "upscale", "m"));
        assert!(!granted(&["upscale".to_owned()], "upscale", "m"));
    }
}
