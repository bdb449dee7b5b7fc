"""One-shot runs in languages other than Python, through /v1/tci/batch and /sandboxfusion,
against a real server: hello world with stdin, runtime errors, time and memory limits, compile
errors with the compiler's message, the libraries SandboxFusion's runtime offers, isolation,
and compile-once within a batch."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import IGNORING_SIGNALS, Server, make_server

# A program per language that reads a name from stdin and greets it (SandboxFusion's runner
# tests' shapes: Main.java, package main, fn main...).
HELLO = {
    "cpp": "#include <iostream>\n#include <string>\nint main(){std::string s;std::cin>>s;"
           "std::cout<<\"hello \"<<s<<std::endl;return 0;}\n",
    "c": "#include <stdio.h>\nint main(){char s[64];scanf(\"%63s\",s);printf(\"hello %s\\n\",s);"
         "return 0;}\n",
    "java": "import java.util.*;\npublic class Main{public static void main(String[] a){"
            "Scanner sc=new Scanner(System.in);System.out.println(\"hello \"+sc.next());}}\n",
    "go": "package main\nimport \"fmt\"\nfunc main(){var s string;fmt.Scan(&s);"
          "fmt.Println(\"hello \"+s)}\n",
    "rust": "use std::io::Read;\nfn main(){let mut s=String::new();"
            "std::io::stdin().read_to_string(&mut s).unwrap();println!(\"hello {}\",s.trim());}\n",
    "nodejs": "const s=require('fs').readFileSync(0,'utf8').trim();console.log('hello '+s);\n",
    "typescript": "import * as fs from 'fs';\nconst s: string = fs.readFileSync(0, 'utf8').trim();"
                  "\nconsole.log(`hello ${s}`);\n",
    "bash": "read s\necho \"hello $s\"\n",
    "R": "s <- readLines(file('stdin'), n=1)\ncat('hello', s, '\\n', sep=c(' ', ''))\n",
    "ruby": "s = STDIN.read.strip\nputs \"hello #{s}\"\n",
    "lua": "local s = io.read('l')\nprint('hello ' .. s)\n",
    "php": "<?php\n$s = trim(fgets(STDIN));\necho \"hello $s\\n\";\n",
    "perl": "my $s = <STDIN>; chomp $s; print \"hello $s\\n\";\n",
}
# Exits with 3 after printing to stderr: a runtime error.
FAILS = {
    "cpp": "#include <cstdio>\nint main(){fprintf(stderr,\"bad\\n\");return 3;}\n",
    "c": "#include <stdio.h>\nint main(){fprintf(stderr,\"bad\\n\");return 3;}\n",
    "java": "public class Main{public static void main(String[] a){System.err.println(\"bad\");"
            "System.exit(3);}}\n",
    "go": "package main\nimport (\"fmt\";\"os\")\nfunc main(){fmt.Fprintln(os.Stderr,\"bad\");"
          "os.Exit(3)}\n",
    "rust": "fn main(){eprintln!(\"bad\");std::process::exit(3);}\n",
    "nodejs": "console.error('bad'); process.exit(3);\n",
    "typescript": "const n: number = 3; console.error('bad'); process.exit(n);\n",
    "bash": "echo bad >&2; exit 3\n",
    "R": "message('bad'); quit(status=3)\n",
    "ruby": "STDERR.puts 'bad'; exit 3\n",
    "lua": "io.stderr:write('bad\\n'); os.exit(3)\n",
    "php": "<?php fwrite(STDERR, \"bad\\n\"); exit(3);\n",
    "perl": "print STDERR \"bad\\n\"; exit 3;\n",
}
# Never ends on its own.
LOOPS = {
    "cpp": "int main(){volatile long x=0;for(;;)x++;}\n",
    "java": "public class Main{public static void main(String[] a){while(true){}}}\n",
    "go": "package main\nfunc main(){for{}}\n",
    "rust": "fn main(){let mut x:u64=1;loop{x=x.wrapping_mul(3);if x==0{println!(\"0\");}}}\n",
    "nodejs": "for(;;){}\n",
    "typescript": "let x: number = 0; for(;;){ x++; }\n",
    "bash": "while true; do :; done\n",
    "R": "repeat {}\n",
    "ruby": "loop {}\n",
    "lua": "while true do end\n",
    "php": "<?php while(true){}\n",
    "perl": "while(1){}\n",
}
# Keeps 1 GiB, touched, far past a 128 MB limit.
HOGS = {
    "cpp": "#include <vector>\n#include <cstdio>\nint main(){std::vector<char> v(1<<30,1);"
           "printf(\"%d\\n\",v[12345]);}\n",
    "java": "public class Main{public static void main(String[] a){java.util.List<long[]> l="
            "new java.util.ArrayList<>();while(true){l.add(new long[1<<20]);}}}\n",
    "go": "package main\nimport \"fmt\"\nfunc main(){var k [][]byte;for i:=0;i<1024;i++{"
          "b:=make([]byte,1<<20);for j:=range b{b[j]=1};k=append(k,b)};fmt.Println(len(k))}\n",
    "rust": "fn main(){let v=vec![1u8;1<<30];println!(\"{}\",v[12345]);}\n",
    "nodejs": "const a=[];for(;;){a.push(Buffer.alloc(1<<20,1));}\n",
    "bash": "x=$(head -c 1073741824 /dev/zero | tr '\\0' a); echo ${#x}\n",
    "ruby": "a = []; loop { a << ('x' * (1 << 20)) }\n",
}
# Does not compile: the compiler's message names the problem.
BROKEN = {
    "cpp": ("int main(){ undefined_thing(); }\n", "undefined_thing"),
    "c": ("int main(){ return undefined_thing; }\n", "undefined_thing"),
    "java": ("public class Main{public static void main(String[] a){int x = \"s\";}}\n",
             "incompatible types"),
    "go": ("package main\nfunc main(){ undefinedThing() }\n", "undefinedThing"),
    "rust": ("fn main(){ let x: u32 = \"s\"; }\n", "mismatched types"),
    "typescript": ("const x = ;\n", "Unexpected"),
}


def batch(server: Server, *runs: dict, timeout: float = 600) -> list[dict]:
    with server.client(timeout=timeout) as client:
        response = client.post("/v1/tci/batch", json={"runs": list(runs)})
    assert response.status_code == 200, response.text
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert sorted(line["index"] for line in lines) == list(range(len(runs)))
    return sorted(lines, key=lambda line: line["index"])


def one(server: Server, language: str, code: str, **run: object) -> dict:
    return batch(server, {"code": code, "language": language, **run})[0]


@pytest.fixture(scope="module")
def langs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    instance = make_server(tmp_path_factory.mktemp("langs"), started_by=IGNORING_SIGNALS,
                           sandboxfusion_key="test")
    yield instance
    instance.stop()


def test_health_says_which_languages_runs_offer(langs: Server) -> None:
    with langs.client() as client:
        offered = client.get("/health").json()["languages"]["runs"]
    assert offered == {name: True for name in ["python", *HELLO]}


@pytest.mark.parametrize("language", sorted(HELLO))
def test_hello_world_reads_stdin(langs: Server, language: str) -> None:
    line = one(langs, language, HELLO[language], stdin="world\n", expected_stdout="hello world")
    assert (line["verdict"], line["stdout"].rstrip(), line["exit_code"]) == (
        "OK", "hello world", 0), line


@pytest.mark.parametrize("language", sorted(FAILS))
def test_a_nonzero_exit_is_a_runtime_error_with_its_stderr(langs: Server, language: str
                                                           ) -> None:
    line = one(langs, language, FAILS[language])
    assert (line["verdict"], line["exit_code"]) == ("RUNTIME_ERROR", 3), line
    assert "bad" in line["stderr"]


@pytest.mark.parametrize("language", sorted(LOOPS))
def test_a_program_past_its_time_limit_is_killed(langs: Server, language: str) -> None:
    line = one(langs, language, LOOPS[language], timeout=1.5)
    assert (line["verdict"], line["exit_code"]) == ("TIME_LIMIT", None), line
    assert 1.5 <= line["wall_s"] < 30


@pytest.mark.parametrize("language", sorted(HOGS))
def test_a_program_past_its_memory_limit_is_a_memory_limit(langs: Server, language: str
                                                           ) -> None:
    line = one(langs, language, HOGS[language], memory_mb=128, timeout=60)
    # The JVM and V8 size their heaps by the run's limit: they fail with their own
    # out-of-memory error (a runtime error naming it) rather than being killed.
    if language in ("java", "nodejs") and line["verdict"] == "RUNTIME_ERROR":
        assert re.search(r"OutOfMemoryError|heap out of memory", line["stderr"]), line
    else:
        assert line["verdict"] == "MEMORY_LIMIT", line


@pytest.mark.parametrize("language", sorted(BROKEN))
def test_a_compile_error_carries_the_compilers_message(langs: Server, language: str) -> None:
    code, message = BROKEN[language]
    line = one(langs, language, code)
    assert (line["verdict"], line["exit_code"]) == ("COMPILE_ERROR", None), line
    assert message in line["stderr"]


def test_a_compile_past_compile_timeout_is_a_compile_error(langs: Server) -> None:
    # Templates instantiated to a depth that takes g++ far longer than 0.5 s.
    code = ("template<int N> struct F { static const long v = F<N-1>::v + F<N-2>::v; };\n"
            "template<> struct F<0> { static const long v = 0; };\n"
            "template<> struct F<1> { static const long v = 1; };\n"
            "#include <bits/stdc++.h>\nint main(){ std::cout << F<80>::v; }\n")
    line = one(langs, "cpp", code, compile_timeout=0.05)
    assert line["verdict"] == "COMPILE_ERROR", line
    assert "compile timed out after 0.05 s" in line["stderr"]


def test_cpp_has_bits_stdcpp(langs: Server) -> None:
    code = ("#include <bits/stdc++.h>\nusing namespace std;\nint main(){vector<int> v{3,1,2};"
            "sort(v.begin(),v.end());for(int x:v)cout<<x;cout<<endl;}\n")
    line = one(langs, "cpp", code)
    assert (line["verdict"], line["stdout"]) == ("OK", "123\n"), line


def test_node_and_typescript_have_lodash_by_require_and_import(langs: Server) -> None:
    runs = [
        {"language": "nodejs", "code": "const _ = require('lodash');\n"
                                       "console.log(_.chunk([1,2,3,4], 2).length);\n"},
        {"language": "typescript", "code": "import _ from 'lodash';\n"
                                           "console.log(_.chunk([1,2,3,4], 2).length);\n"},
        {"language": "typescript", "code": "const _ = require('lodash');\n"
                                           "console.log(_.sum([1, 1]));\n"},
        {"language": "typescript", "code": "enum E { A = 2 }\n"
                                           "const fs = await import('node:fs');\n"
                                           "console.log(E.A, typeof fs.readFileSync);\n"},
    ]
    lines = batch(langs, *runs)
    assert [(line["verdict"], line["stdout"]) for line in lines] == [
        ("OK", "2\n"), ("OK", "2\n"), ("OK", "2\n"), ("OK", "2 function\n")], lines


def test_java_has_javatuples_on_its_classpath(langs: Server) -> None:
    code = ("import org.javatuples.Pair;\npublic class Main{public static void main(String[] a)"
            "{System.out.println(Pair.with(1, \"x\").getValue1());}}\n")
    line = one(langs, "java", code)
    assert (line["verdict"], line["stdout"]) == ("OK", "x\n"), line


def test_go_and_the_jvm_start_their_threads(langs: Server) -> None:
    runs = [
        {"language": "go", "code": "package main\nimport (\"fmt\";\"sync\")\nfunc main(){"
                                   "var w sync.WaitGroup;n:=0;var m sync.Mutex;"
                                   "for i:=0;i<64;i++{w.Add(1);go func(){m.Lock();n++;"
                                   "m.Unlock();w.Done()}()};w.Wait();fmt.Println(n)}\n"},
        {"language": "java", "code": "public class Main{public static void main(String[] a)"
                                     " throws Exception{Thread[] t=new Thread[32];"
                                     "for(int i=0;i<32;i++){t[i]=new Thread(()->{});"
                                     "t[i].start();}for(Thread x:t)x.join();"
                                     "System.out.println(32);}}\n"},
    ]
    assert [line["stdout"] for line in batch(langs, *runs)] == ["64\n", "32\n"]


def test_a_run_sees_no_other_runs_files(langs: Server) -> None:
    """Each run writes a file of its own into /tmp and /workspace, then lists both: it sees
    its own only, whatever ran before or beside it."""
    code = ("echo mine > /tmp/$1.txt 2>/dev/null; f=$RANDOM$$; touch /tmp/$f /workspace/$f; "
            "ls /tmp /workspace | grep -v '^/' | grep -cv -e '^$' -e tci-build -e main.sh "
            "-e node_modules")
    lines = batch(langs, *[{"language": "bash", "code": code} for _ in range(4)])
    assert [line["stdout"] for line in lines] == ["2\n"] * 4, lines


def test_runs_reach_no_network(langs: Server) -> None:
    """TCI_RUN_NETWORK=none by default: not even the host's loopback is reachable (the run
    has a network namespace of its own, with only its own lo)."""
    code = ("#include <bits/stdc++.h>\n#include <sys/socket.h>\n#include <netinet/in.h>\n"
            "#include <arpa/inet.h>\n#include <unistd.h>\nint main(){int s=socket(AF_INET,"
            "SOCK_STREAM,0);sockaddr_in a{};a.sin_family=AF_INET;a.sin_port=htons(%d);"
            "inet_pton(AF_INET,\"127.0.0.1\",&a.sin_addr);int r=connect(s,(sockaddr*)&a,"
            "sizeof a);printf(\"%%d\\n\",r);}\n")
    port = int(langs.url.rsplit(":", 1)[1])
    line = one(langs, "cpp", code % port)
    assert (line["verdict"], line["stdout"]) == ("OK", "-1\n"), line


def test_a_signal_is_a_runtime_error_without_exit_code(langs: Server) -> None:
    line = one(langs, "cpp", "#include <cstdlib>\nint main(){ std::abort(); }\n")
    assert (line["verdict"], line["exit_code"]) == ("RUNTIME_ERROR", None), line


def test_a_program_starts_as_a_shell_starts_it(langs: Server) -> None:
    """Only fds 0-2 open, no signal blocked, none ignored (Python's pid 1 ignores SIGPIPE and
    SIGXFSZ; the server was started with SIGHUP, 32 and 33 ignored): a program killed by a
    closed pipe dies of it, as it would anywhere."""
    code = ("#include <stdio.h>\n#include <dirent.h>\n#include <string.h>\n"
            "int main(){DIR*d=opendir(\"/proc/self/fd\");struct dirent*e;"
            "while((e=readdir(d)))if(e->d_name[0]!='.')printf(\"fd %s\\n\",e->d_name);"
            "closedir(d);FILE*f=fopen(\"/proc/self/status\",\"r\");char l[256];"
            "while(fgets(l,256,f))if(!strncmp(l,\"Sig\",3))fputs(l,stdout);return 0;}\n")
    line = one(langs, "c", code)
    assert line["verdict"] == "OK", line
    words = [text.split(":") if text.startswith("Sig") else text.split()
             for text in line["stdout"].splitlines()]
    fds = sorted(int(value) for name, value in words if name == "fd")
    assert fds == [0, 1, 2, 3], line  # 3: the listing's own directory
    masks = {name: int(value, 16) for name, value in words
             if name in ("SigBlk", "SigIgn", "SigCgt")}
    assert (masks["SigBlk"], masks["SigIgn"], masks["SigCgt"]) == (0, 0, 0), line
    dies = one(langs, "c", "#include <signal.h>\nint main(){raise(SIGPIPE);return 0;}\n")
    assert (dies["verdict"], dies["exit_code"]) == ("RUNTIME_ERROR", None), dies


def _metric(server: Server, name: str, language: str) -> float:
    with server.client() as client:
        text = client.get("/metrics").text
    match = re.search(rf'^{name}_total{{language="{language}"}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_a_batch_of_one_program_compiles_it_once(tmp_path_factory: pytest.TempPathFactory
                                                 ) -> None:
    """Eight test cases of one C++ sample: one compile, seven runs of the kept build (the
    server's counters say so), each with its own stdin and verdict."""
    server = make_server(tmp_path_factory.mktemp("once"))
    try:
        code = ("#include <bits/stdc++.h>\nint main(){long a,b;std::cin>>a>>b;"
                "std::cout<<a+b<<std::endl;}\n")
        runs = [{"language": "cpp", "code": code, "stdin": f"{i} {i}",
                 "expected_stdout": str(2 * i if i != 7 else 0)} for i in range(8)]
        lines = batch(server, *runs)
        assert [line["verdict"] for line in lines] == ["OK"] * 7 + ["WRONG_ANSWER"]
        assert _metric(server, "tci_run_compiles", "cpp") == 1
        assert _metric(server, "tci_run_builds_reused", "cpp") == 7
        # The same code again, with another file beside it: another compile (a file may be
        # #included), and a program that does not compile is compiled once too.
        with_file = {**runs[0], "files": [{"name": "x.h", "content": "int x;"}]}
        broken = {"language": "cpp", "code": "int main( {"}
        lines = batch(server, with_file, broken, broken, broken)
        assert [line["verdict"] for line in lines] == ["OK"] + ["COMPILE_ERROR"] * 3
        assert len({line["stderr"] for line in lines[1:]}) == 1
        assert _metric(server, "tci_run_compiles", "cpp") == 3
    finally:
        server.stop()


def test_an_unknown_language_is_refused_naming_the_offered_ones(langs: Server) -> None:
    with langs.client() as client:
        response = client.post("/v1/tci/batch", json={"runs": [
            {"code": "x", "language": "cobol"}]})
    assert response.status_code == 400
    assert "cobol" in response.text and "cpp" in response.text and "java" in response.text
    fusion = httpx.post(f"{langs.url}/sandboxfusion/run_code", timeout=60,
                        json={"code": "x", "language": "cobol"})
    assert fusion.status_code == 400
    assert "it offers:" in fusion.text and "nodejs" in fusion.text and "R" in fusion.text


def test_sandboxfusion_runs_cpp_java_and_typescript(langs: Server) -> None:
    """SandboxFusion's wire (what verl's client posts), its runner tests' expectations:
    a compile_result for compiled languages, none for interpreted ones, run_result null
    after a failed compile."""
    def run_code(**body: object) -> dict:
        response = httpx.post(f"{langs.url}/sandboxfusion/run_code", json=body, timeout=300)
        assert response.status_code == 200, response.text
        return response.json()

    cpp = run_code(code=HELLO["cpp"], language="cpp", stdin="x", run_timeout=5,
                   compile_timeout=30)
    assert cpp["status"] == "Success", cpp
    assert cpp["compile_result"]["status"] == "Finished"
    assert cpp["run_result"]["stdout"] == "hello x\n"
    java = run_code(code=FAILS["java"], language="java", compile_timeout=30)
    assert (java["status"], java["run_result"]["return_code"]) == ("Failed", 3)
    ts = run_code(code=HELLO["typescript"], language="ts", stdin="y")
    assert (ts["status"], ts["run_result"]["stdout"]) == ("Success", "hello y\n")
    node = run_code(code=HELLO["nodejs"], language="nodejs", stdin="z")
    assert node["compile_result"] is None and node["run_result"]["stdout"] == "hello z\n"
    broken = run_code(code=BROKEN["go"][0], language="go")
    assert (broken["status"], broken["run_result"]) == ("Failed", None), broken
    assert broken["compile_result"]["return_code"] != 0
    assert "undefinedThing" in broken["compile_result"]["stderr"]
    loop = run_code(code=LOOPS["cpp"], language="cpp", run_timeout=0.5)
    assert loop["status"] == "Failed"
    assert loop["run_result"]["status"] == "TimeLimitExceeded"
    assert loop["run_result"]["return_code"] is None


def test_a_hostile_compile_ends_at_its_limits_and_spares_its_neighbours(langs: Server) -> None:
    """A compiler fed /dev/urandom grows until the run's memory cgroup or compile_timeout
    ends it: COMPILE_ERROR (never a sandbox error, never kept); the innocent runs beside it
    score right."""
    hostile = {"language": "cpp", "code": '#include "/dev/urandom"\n', "memory_mb": 128,
               "compile_timeout": 5}
    innocent = {"language": "c", "code": HELLO["c"], "stdin": "x", "expected_stdout": "hello x"}
    lines = batch(langs, hostile, innocent, hostile, innocent)
    assert [line["verdict"] for line in lines] == ["COMPILE_ERROR", "OK"] * 2, lines
    assert all(line["stderr"] for line in lines[::2])


def test_files_go_in_and_come_back_in_a_compiled_run(langs: Server) -> None:
    """SandboxFusion's files and fetch_files around a Go program: it reads one file given
    and writes another, which comes back; a file it did not write is left out."""
    code = ("package main\nimport (\"os\";\"strings\")\nfunc main(){b,_:=os.ReadFile(\"in.txt\");"
            "os.WriteFile(\"/tmp/out.txt\",[]byte(strings.ToUpper(string(b))),0644)}\n")
    response = httpx.post(f"{langs.url}/sandboxfusion/run_code", timeout=300, json={
        "code": code, "language": "go", "files": {"in.txt": "aGVsbG8="},
        "fetch_files": ["/tmp/out.txt", "missing.txt"]})
    result = response.json()
    assert result["status"] == "Success", result
    assert result["files"] == {"/tmp/out.txt": "SEVMTE8="}
