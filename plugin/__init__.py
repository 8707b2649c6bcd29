"""Remote-code files of the BigBirdPegasus Hub plugin. A Hub repo carries the modules beside this file, not this file."""
