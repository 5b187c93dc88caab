//! Runs the test stand-in for a node until killed, printing its addresses, so the generator
//! can be measured on its own: `cargo run --release -p switchboard-bench --example mock_node`.

#[path = "../tests/support/mock.rs"]
mod mock;

fn main() {
    let m = mock::start_mock(mock::Fault::None);
    println!("mock listening ws=ws://{}/ws api=http://{}", m.ws, m.api);
    loop {
        std::thread::park();
    }
}
