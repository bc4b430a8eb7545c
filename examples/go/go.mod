module twinreg.example/client

go 1.19
