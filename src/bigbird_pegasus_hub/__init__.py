"""Tools around the BigBirdPegasus Hub plugin: repo builder, Hub push, command line."""
