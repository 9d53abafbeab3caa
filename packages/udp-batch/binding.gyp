{
  "targets": [
    {
      "target_name": "udp_batch",
      "conditions": [
        ["OS=='linux'", { "sources": ["src/udp_batch.c", "src/sd_notify.c"] }]
      ],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]
    }
  ]
}
