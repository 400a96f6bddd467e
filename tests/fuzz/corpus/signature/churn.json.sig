{
  "keel_signature": 1,
  "algorithm": "ed25519",
  "key_id": "790901b82a89fe505b5f98e2b7bf28e3a74f9a40f1a561c9d353f85f61cc36a2",
  "signature": "B1H+20Ib6p5njs9lQF+jMARZeiFE7bTH+4kHECpXrFFBNMz2jz6vCGyCTigbQEbKIGdvtJcrlZRtN2hxqHZnBA==",
  "comment": "soak fixture"
}
