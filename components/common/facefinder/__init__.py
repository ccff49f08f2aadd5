"""Face finding shared by convert, predict and the faces CLI: detect (MediaPipe BlazeFace), align (level the eyes), crop."""
