"""gptomni operator: health-checks GPTOmniCredential cookies and writes the relay's pool Secret."""

GROUP = "gptomni.io"
VERSION = "v1alpha1"
PLURAL = "gptomnicredentials"
KIND = "GPTOmniCredential"
FINALIZER = "gptomni.io/pool-cleanup"
MANAGED_BY = "gptomni-operator"
CONTENT_HASH_ANNOTATION = "gptomni.io/content-hash"
