"""Repository maintenance: retention (``forget``), garbage collection (``prune``), integrity
(``check``), catalog reconstruction (``rebuild``) and second copies (``copy``)."""
