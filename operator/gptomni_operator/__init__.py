"""gptomni operator: health-checks GPTOmniCredential cookies and writes the relay's pool Secret;
publishes GPTOmniAPIKey resources into the relay's key-set Secret."""

GROUP = "gptomni.io"
VERSION = "v1alpha1"
PLURAL = "gptomnicredentials"
KIND = "GPTOmniCredential"
FINALIZER = "gptomni.io/pool-cleanup"
MANAGED_BY = "gptomni-operator"
CONTENT_HASH_ANNOTATION = "gptomni.io/content-hash"
API_KEY_PLURAL = "gptomniapikeys"
API_KEY_KIND = "GPTOmniAPIKey"
