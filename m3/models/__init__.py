"""Model families (one file each) and the checkpoint loaders."""
