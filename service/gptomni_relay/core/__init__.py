"""The relay's domain: the credential pool, failover across credentials, folding a
conversation into one prompt, token estimates. Nothing here knows HTTP or OpenAI's wire
format; failures leave as the domain errors of `core.errors`."""
