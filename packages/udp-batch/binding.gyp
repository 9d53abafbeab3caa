{
  "targets": [
    {
      "target_name": "udp_batch",
      "conditions": [
        ["OS=='linux'", { "sources": ["src/udp_batch.c"] }]
      ],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]
    }
  ]
}
