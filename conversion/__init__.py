"""Checkpoint converters: Google's original TensorFlow BigBird checkpoints and transformers' bigbird_pegasus."""
