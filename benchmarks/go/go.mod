module tcpecho.bench/echo

go 1.19
