//! A power cut in the middle of a factory reset: the next boot resumes the reset and
//! ends with a factory-fresh appliance, never a half-erased or unbootable one.

use std::time::{Duration, Instant};

use keel_qemu_tests::{
    image_or_skip, json_post, set_up_admin, Firmware, Vm, BOOT_CEILING, READY_MARKER,
};
use serde_json::json;

const PASSWORD: &str = "power cut console password";
const ERASING: &str = "keel-reset: factory reset: erasing";
const ERASED: &str = "keel-reset: data erased";
/// A larger disk makes the erase take long enough to cut into it.
const GROW: u64 = 16 << 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn factory_reset_resumes_after_a_power_cut() {
    let Some(image) = image_or_skip() else {
        return;
    };
    let mut vm = Vm::start_grown("powercut", &image, Firmware::Bios, GROW).unwrap();
    vm.wait_serial(READY_MARKER, BOOT_CEILING).await.unwrap();
    vm.wait_https(BOOT_CEILING).await.unwrap();
    let first_code = vm.setup_code().unwrap();
    let (http, csrf, first_cert) = set_up_admin(&vm, PASSWORD).await.unwrap();

    let (st, body) = json_post(
        &http,
        &vm.url("/appliance/api/v1/system/factory-reset"),
        json!({"confirm": "RESET"}),
        Some(&csrf),
    )
    .await
    .unwrap();
    assert_eq!(st, 202, "{body}");

    // Pull the plug as soon as the erase has started.
    let deadline = Instant::now() + BOOT_CEILING;
    while !vm.serial().contains(ERASING) {
        assert!(Instant::now() < deadline, "no erase\n{}", vm.serial_tail());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    vm.kill();
    let cut_mid_erase = !vm.serial().contains(ERASED);
    eprintln!(
        "power cut {} the erase had finished",
        if cut_mid_erase { "before" } else { "after" }
    );

    // The next boot carries the reset out again, to the end.
    vm.boot().unwrap();
    vm.wait_serial(READY_MARKER, BOOT_CEILING).await.unwrap();
    vm.wait_https(BOOT_CEILING).await.unwrap();
    let serial = vm.serial();
    if cut_mid_erase {
        assert!(
            serial.contains(ERASING) && serial.contains(ERASED),
            "reset not resumed after the power cut\n{}",
            vm.serial_tail()
        );
    }
    let code = vm.setup_code().expect("a new setup code after the reset");
    assert_ne!(code, first_code);
    let (http, seen) = vm.client();
    let (st, _) = json_post(
        &http,
        &vm.url("/appliance/api/v1/login"),
        json!({"username": "admin", "password": PASSWORD}),
        None,
    )
    .await
    .unwrap();
    assert_ne!(st, 200, "the old password still works");
    assert_ne!(
        seen.seen_der().unwrap(),
        first_cert,
        "same certificate after the reset"
    );

    // The reset is over: set up, reboot, and nothing is erased again.
    let (http, csrf, _) = set_up_admin(&vm, "a new console password").await.unwrap();
    let erases = vm.serial().matches(ERASING).count();
    let (st, body) = json_post(
        &http,
        &vm.url("/appliance/api/v1/system/reboot"),
        json!({}),
        Some(&csrf),
    )
    .await
    .unwrap();
    assert_eq!(st, 202, "{body}");
    vm.wait_serial_count(READY_MARKER, 2, BOOT_CEILING)
        .await
        .unwrap();
    vm.wait_https(BOOT_CEILING).await.unwrap();
    assert_eq!(vm.serial().matches(ERASING).count(), erases, "erased again");
    let (http, _) = vm.client();
    let (st, body) = json_post(
        &http,
        &vm.url("/appliance/api/v1/login"),
        json!({"username": "admin", "password": "a new console password"}),
        None,
    )
    .await
    .unwrap();
    assert_eq!(st, 200, "{body}");
    vm.kill();
}
