"""What several methods share to distil a teacher into a student, kept out of any one method's folder.

- :mod:`.teacher` — the frozen teacher run by the core (logits, chosen hidden states, pre-softmax scores) and
  a snapshot of the student as its own teacher (DynaBERT's width × depth stage);
- :mod:`.cache` — the teacher's outputs cached on disk, the teacher run once per example (TinyBERT, TR-BERT's
  logits);
- :mod:`.augment` — TinyBERT's data augmentation (§3.3), also DynaBERT's ``--augment``; options in :mod:`.config`;
- :mod:`.texts` — the training texts and unlabelled text that distillation reads;
- :mod:`.fingerprint` — content hashes that name the caches.

Nothing is imported here, so that reading a method's options (:mod:`.config`) stays cheap; import the module
you need.
"""
