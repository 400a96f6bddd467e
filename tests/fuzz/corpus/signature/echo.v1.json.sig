{
  "keel_signature": 1,
  "algorithm": "ed25519",
  "key_id": "790901b82a89fe505b5f98e2b7bf28e3a74f9a40f1a561c9d353f85f61cc36a2",
  "signature": "h0aypC4oD8/qZmTYiRsgtrTLPPnCT2zVyGcP9Z6dnBr9UrgCFF5hD6gtR++w3AbmYiooPxepv9HO83LWXVtHCw==",
  "comment": "soak fixture"
}
